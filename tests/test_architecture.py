"""The layer rule of kneuron, read from the source with `ast` so that it cannot silently break.

Floors, bottom to top (ARCHITECTURE.md draws them), read from the package a module sits in:

- ``kneuron.engine.errors``: the one shared leaf (the `KneuronError` every floor raises); it imports no project code.
- storage: ``kneuron.warehouse`` (files, manifest, DuckDB views), then ``kneuron.queries`` (SQL over the warehouse).
- compute: every other ``kneuron.engine`` package (models, data, inpaint, signals, interventions, baselines, ...).
- pipelines: ``kneuron.engine.pipelines``, the only engine code that touches storage.
- api: the modules of ``kneuron`` itself (the Python API), over the pipelines.
- ``kneuron.cli``: one click module per command, on top.

Storage and compute are side by side: neither imports the other. Each step pipeline (``ingest``, ``select``,
``suppress``, ``report``) imports its own package and the shared modules (``sets``, ``run``), never another step.
No import cycles anywhere, counting imports inside functions and under ``TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "cli", "queries", "warehouse")  # repo folders, installed as kneuron.<name>
SHARED_PIPELINES = {"sets", "run", "ray_cluster"}
STEPS = ("ingest", "select", "suppress", "report")
PIPELINES = "kneuron.engine.pipelines"


def module_name(path: Path) -> str:
    """``engine/signals/record.py`` -> ``kneuron.engine.signals.record``; ``kneuron/x.py`` -> ``kneuron.x``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "kneuron" else ["kneuron", *parts])


def project_imports(path: Path, name: str | None = None) -> set[str]:
    """Every project name that ``path`` (module ``name``) imports: module level, in functions, TYPE_CHECKING."""
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
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from kneuron.engine import x`
    # the root package `kneuron` is every module's parent (`from kneuron import warehouse` imports the subpackage)
    return {m for m in found if m.split(".")[0] == "kneuron" and m != "kneuron"}


def source_files() -> list[Path]:
    """The library's files: the four folders and the modules of ``kneuron/`` itself (not its links)."""
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return files + sorted(p for p in (ROOT / "kneuron").glob("*.py") if not p.is_symlink())


def modules() -> dict[str, set[str]]:
    return {module_name(path): project_imports(path) for path in source_files()}


def floor(module: str) -> str:
    """The floor of a module, from its package."""
    parts = module.split(".")
    if module == "kneuron.engine.errors":
        return "errors"
    if module == PIPELINES or module.startswith(PIPELINES + "."):
        return "pipelines"
    if len(parts) > 1 and parts[1] == "engine":
        return "compute"
    if len(parts) > 1 and parts[1] in ("warehouse", "queries", "cli"):
        return parts[1]
    return "api"


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
    """The step a pipeline module belongs to, from its package (``...pipelines.ingest.rows`` -> ``ingest``);
    None for a shared module."""
    rest = module[len(PIPELINES) + 1:].split(".") if module != PIPELINES else []
    if not rest or rest[0] in SHARED_PIPELINES:
        return None
    if rest[0] in STEPS:
        return rest[0]
    raise AssertionError(f"pipeline module {module} is neither in a step ({', '.join(STEPS)}) nor shared")


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


def imported_modules(path: Path) -> set[str]:
    """The project modules ``path`` imports: ``from p import m`` imports module ``p.m`` when there is one (its
    package ``p`` runs first as every parent does, an edge the graph leaves out), else names in module ``p``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(t for alias in node.names if (t := real(alias.name)) is not None)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                t = sub if sub in MODULES else real(node.module)
                if t is not None:
                    found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (self-imports dropped), over every library file."""
    return {module_name(path): imported_modules(path) - {module_name(path)} for path in source_files()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


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
        if t is None or floor(t) != "pipelines" or t == PIPELINES:
            continue
        theirs = step(t)
        assert theirs is None or theirs == mine, f"{module} (step {mine}) imports the {theirs} step ({t})"


def test_steps_are_packages_not_name_prefixes() -> None:
    """A step's helpers live in its package (``pipelines/ingest/plan.py``), not beside it as ``ingest_plan.py``."""
    loose = sorted(p.name for p in (ROOT / "engine" / "pipelines").glob("*.py")
                   if any(p.stem.startswith(s + "_") for s in STEPS))
    assert not loose, f"pipeline modules named by a step prefix instead of sitting in the step's package: {loose}"


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": {"e"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_errors_is_a_leaf() -> None:
    assert MODULES["kneuron.engine.errors"] == set()


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The reader sees imports inside functions, under TYPE_CHECKING and relative ones (the rule is not vacuous)."""
    source = tmp_path / "x.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kneuron.cli import main\n"
                      "def f():\n    import kneuron.warehouse.store\n    from kneuron.queries import selection\n"
                      "from ..pipelines import sets\n")
    assert project_imports(source, "kneuron.engine.eval.x") == {
        "kneuron.cli", "kneuron.cli.main", "kneuron.warehouse.store", "kneuron.queries",
        "kneuron.queries.selection", "kneuron.engine.pipelines", "kneuron.engine.pipelines.sets"}
    assert floor("kneuron.engine.signals.heatmap") == "compute" and "warehouse" not in ALLOWED["compute"]
    assert step("kneuron.engine.pipelines.ingest.plan") == "ingest" and step(PIPELINES + ".sets") is None


def test_no_module_over_the_size_limit() -> None:
    """Modules stay under ~450 lines; a longer one must say in its docstring why it has one job."""
    long = []
    for path in source_files():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > 460 and "one job:" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append((str(path.relative_to(ROOT)), n))
    assert not long, f"modules over 460 lines without a 'one job:' note in their docstring: {long}"
