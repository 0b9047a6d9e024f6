"""One `kneuron` namespace: the repo's folders install as ``kneuron.<folder>`` and nothing else at top level.

The package list in pyproject.toml is explicit (setuptools ``package-dir`` maps ``kneuron.engine`` to ``engine/``,
which editable installs honour); these tests keep it equal to the tree, check that the links under ``kneuron/``
(for tools that read files, such as mypy) point at the folders, and that modules named like kneuron's folders on
``PYTHONPATH`` (a notebook's own ``queries.py``) shadow nothing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("cli", "engine", "queries", "warehouse")


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def tree_packages() -> list[str]:
    """``kneuron`` plus every folder with an ``__init__.py`` under the four library folders, as installed names."""
    found = ["kneuron"]
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            found.append(".".join(["kneuron", *init.parent.relative_to(ROOT).parts]))
    return sorted(found)


def test_the_package_list_matches_the_tree() -> None:
    assert sorted(pyproject()["tool"]["setuptools"]["packages"]) == tree_packages()


def test_each_folder_installs_under_kneuron() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"kneuron": "kneuron", **{f"kneuron.{f}": f for f in FOLDERS}}
    assert pyproject()["project"]["scripts"] == {"kneuron": "kneuron.cli.main:main"}
    for folder in FOLDERS:
        link = ROOT / "kneuron" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link


def test_package_data_names_installed_packages() -> None:
    data = pyproject()["tool"]["setuptools"]["package-data"]
    assert set(data) <= set(tree_packages())
    assert any((ROOT / "queries").glob("*.sql")) and "*.sql" in data["kneuron.queries"]
    carried = {path for pattern in data["kneuron.queries"] for path in (ROOT / "queries").glob(pattern)}
    assert sorted(set((ROOT / "queries").rglob("*.sql")) - carried) == []  # every query, view and fragment


def run_python(code: str, cwd: Path, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def shadows(tmp_path: Path) -> Path:
    """A folder of modules named like kneuron's folders, each failing on import."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    for name in FOLDERS:
        (folder / f"{name}.py").write_text(f"raise ImportError('the local {name}.py was imported')\n")
    return folder


def test_a_local_queries_module_breaks_neither_the_cli_nor_the_api(shadows: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from kneuron.warehouse import Warehouse\n"
        "from kneuron import queries\n"
        f"Warehouse.open({str(tmp_path / 'wh')!r}, create=True).close()\n"
        "assert queries.parameters('SELECT $a') == ['a'], queries.parameters('SELECT $a')\n"
        "from kneuron.cli.main import main\n"
        f"main(['sql', 'SELECT 41 + 1 AS answer', '--warehouse', {str(tmp_path / 'wh')!r}, '--format', 'csv'])\n"
    )
    result = run_python(code, cwd=shadows, pythonpath=[shadows, ROOT])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["answer", "42"]
    assert "was imported" not in result.stderr


def installed_from_here(cwd: Path) -> bool:
    probe = run_python("import importlib.util as u; s = u.find_spec('kneuron.engine'); "
                       "print(s.origin if s else '')", cwd=cwd)
    origin = probe.stdout.strip()
    return bool(origin) and Path(origin).resolve().is_relative_to(ROOT.resolve())


def test_outside_the_repo_only_kneuron_is_importable(tmp_path: Path) -> None:
    if not installed_from_here(tmp_path):
        pytest.skip("kneuron is not installed from this checkout (pip install -e .)")
    result = run_python("import kneuron.engine.errors, kneuron.cli.main, kneuron.queries, kneuron.warehouse\n"
                        "import importlib.util as u\n"
                        "print([n for n in ('engine', 'cli', 'queries', 'warehouse') if u.find_spec(n)])",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_holds_only_kneuron(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: an in-tree build would write build/ and *.egg-info into the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("kneuron", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"pip wheel did not run here: {result.stderr.strip().splitlines()[-1:]}")
    (wheel,) = tmp_path.glob("kneuron-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"kneuron", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                                                 + ".dist-info"}
    for expected in ("kneuron/py.typed", "kneuron/cli/main.py", "kneuron/engine/signals/record.py",
                     "kneuron/queries/two_stage.sql", "kneuron/queries/views/current_sets.sql",
                     "kneuron/queries/fragments/threshold.sql", "kneuron/queries/views/current_members.sql",
                     "kneuron/queries/fragments/score_pass.sql", "kneuron/queries/fragments/members.sql",
                     "kneuron/engine/models/bundled/tiny-shapes-patch/model.safetensors"):
        assert expected in names, expected
    sql_files = {"kneuron/queries/" + path.relative_to(ROOT / "queries").as_posix()
                 for path in (ROOT / "queries").rglob("*.sql")}
    assert sorted(sql_files - set(names)) == []
