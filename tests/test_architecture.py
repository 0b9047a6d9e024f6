"""The layer rule of kneuron, read from the source with `ast` so that it cannot silently break.

Floors, bottom to top (ARCHITECTURE.md draws them):

- ``kneuron.engine.errors``: the one shared leaf (the `KneuronError` every floor raises); it imports no project code.
- storage: ``warehouse`` (files, manifest, DuckDB views), then ``queries`` (SQL over the warehouse).
- compute: every other ``engine`` module (models, data, inpaint, record, caption, baselines, eval, ...).
- pipelines: ``kneuron.engine.pipelines``, the only engine code that touches storage.
- api: ``kneuron`` (the Python API: one function per step, the warehouse handle), over the pipelines.
- ``cli``: one click module per command, on top (thin over the api).

Storage and compute are side by side: neither imports the other. Each step pipeline (ingest, select, suppress,
report) imports its own helper modules (``<step>_*.py``) and the shared ones (``sets``, ``run``), never another
step.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "cli", "queries", "warehouse", "kneuron")
SHARED_PIPELINES = {"sets", "run"}
STEPS = ("ingest", "select", "suppress", "report")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path, name: str | None = None) -> set[str]:
    """Every project module that ``path`` (module ``name``) imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from engine import x` imports x
    return {m for m in found if m.split(".")[0] in PACKAGES and m.split(".")[0] != ""}


def modules() -> dict[str, set[str]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[module_name(path)] = project_imports(path)
    return out


def floor(module: str) -> str:
    if module == "kneuron.engine.errors":
        return "errors"
    if module.startswith(("kneuron.engine.pipelines.", )) or module == "kneuron.engine.pipelines":
        return "pipelines"
    if module == "engine" or module.startswith("engine."):
        return "compute"
    if module == "kneuron" or module.startswith("kneuron."):
        return "api"
    return module.split(".", maxsplit=1)[0]  # warehouse, queries, cli


#: floor -> floors it may import
ALLOWED = {
    "errors": set(),
    "warehouse": {"errors", "warehouse"},
    "queries": {"errors", "warehouse", "queries"},
    "compute": {"errors", "compute"},
    "pipelines": {"errors", "warehouse", "queries", "compute", "pipelines"},
    "api": {"errors", "warehouse", "queries", "compute", "pipelines", "api"},
    "cli": {"errors", "warehouse", "queries", "compute", "pipelines", "api", "cli"},
}


def step(module: str) -> str | None:
    """The step a pipeline module belongs to (``ingest_rows`` -> ``ingest``), or None for a shared module."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf in SHARED_PIPELINES or module == "kneuron.engine.pipelines":
        return None
    for name in STEPS:
        if leaf == name or leaf.startswith(name + "_"):
            return name
    raise AssertionError(f"pipeline module {module} is neither a step ({', '.join(STEPS)}) nor shared")


MODULES = modules()


def real(target: str) -> str | None:
    """The module an import names (``kneuron.engine.models.load_model`` -> ``kneuron.engine.models``), None if
    unknown."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_against_the_floors(module: str) -> None:
    bad = sorted({target for target in MODULES[module]
                  if (t := real(target)) is not None and floor(t) not in ALLOWED[floor(module)]})
    assert not bad, f"{module} ({floor(module)}) imports {bad} ({[floor(real(b) or b) for b in bad]})"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor(m) == "pipelines"))
def test_pipelines_stand_side_by_side(module: str) -> None:
    mine = step(module)
    for target in MODULES[module]:
        t = real(target)
        if t is None or floor(t) != "pipelines" or t == "kneuron.engine.pipelines":
            continue
        theirs = step(t)
        assert theirs is None or theirs == mine, f"{module} (step {mine}) imports the {theirs} step ({t})"


def test_errors_is_a_leaf() -> None:
    assert MODULES["kneuron.engine.errors"] == set()


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The reader sees imports inside functions and relative imports (so the rule is not vacuous)."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    import kneuron.warehouse.store\n    from queries import selection\n"
                      "from ..pipelines import sets\n")
    assert project_imports(source, "kneuron.engine.eval.x") == {"kneuron.warehouse.store", "queries", "kneuron.queries.selection",
                                                          "kneuron.engine.pipelines", "kneuron.engine.pipelines.sets"}
    assert floor("kneuron.engine.signals.heatmap") == "compute" and "warehouse" not in ALLOWED["compute"]


def test_no_module_over_the_size_limit() -> None:
    """Modules stay under ~450 lines; a longer one must say in its docstring why it has one job."""
    long = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > 460 and "one job:" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
                long.append((str(path.relative_to(ROOT)), n))
    assert not long, f"modules over 460 lines without a 'one job:' note in their docstring: {long}"
