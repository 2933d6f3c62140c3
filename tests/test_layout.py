"""The project's shape: the import arrows between packages, no import cycles, module size, packaging pins,
the README's two commands."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED = ("tests", "bench")  # not part of the layered code: they may import anything
MAX_LINES = 400

# The project packages each package may import (any module of them, at any place in a file): models and
# rating_scale at the bottom, the lower layers shared by trainer and service above them, and trainer and
# service on top, neither importing the other (the admin routes start the trainer as a process).
LAYERS = {
    "errors": set(),  # the errors a user can act on, which both CLIs print as one line
    "rating_scale": set(),
    "models": set(),
    "interactions": {"errors", "rating_scale"},  # interaction logs in memory, read from files and public datasets
    "registry": {"errors", "models"},  # published versions: the trainer writes them, the service reads them
    "storage": {"errors", "interactions", "rating_scale"},  # the database: tables, sessions, the data access
    "trainer": {"errors", "interactions", "models", "rating_scale", "registry", "storage"},
    "service": {"errors", "interactions", "models", "rating_scale", "registry", "storage"},
    "migrations": {"storage"},  # Alembic's env reads the tables and the database URL
}
# Modules over MAX_LINES as they stand, each with its line count as the most it may have: they may shrink,
# never grow, and leave the list once split. None is left.
OVERSIZED: dict[str, int] = {}


def project_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: its file} of every .py file under ``root`` outside ``EXCLUDED`` (a package is its
    ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in EXCLUDED or any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            modules[name] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules module ``name`` imports, wherever in the file (a function's import or one under
    ``TYPE_CHECKING`` is a dependency too): ``from pkg import mod`` is ``pkg.mod``, ``from pkg.mod import x``
    is ``pkg.mod``."""

    def nearest_module(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot after the first
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {target for target in map(nearest_module, targets) if target and target != name}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def check_layers(graph: dict[str, set[str]], layers: dict[str, set[str]],
                 known: set[tuple[str, str]] = frozenset()) -> None:
    """Every import between packages goes where ``layers`` allows, or is one of the ``known`` (importer, imported)
    crossings, each of which must still be there (none today: a crossing to tolerate while it is removed)."""
    problems = []
    crossings = set()
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        source, target = importer.split(".")[0], imported.split(".")[0]
        if source not in layers:
            problems.append(f"package {source} ({importer}) is not in the layers: say what it may import")
        elif source != target and target not in layers[source]:
            crossings.add((importer, imported))
            if (importer, imported) not in known:
                allowed = ", ".join(sorted(layers[source])) or "no other package"
                problems.append(f"{importer} imports {imported}: {source} may import {allowed}")
    problems += [f"{a} no longer imports {b}: take it off the known crossings" for a, b in sorted(known - crossings)]
    assert not problems, "\n".join(dict.fromkeys(problems))


def import_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per group of modules that import each other (Tarjan's strongly connected components), in name order:
    one cycle through its first module (a path back to it) and the group's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # recursion depth: the longest import chain, a few dozen here
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while not group or member != module:
                member = stack.pop()
                group.add(member)
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted((_cycle_through(min(group), group, graph), sorted(group)) for group in groups)


def _cycle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & group):
                if target == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, module, start]
                if target not in previous:
                    previous[target] = module
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of {sorted(group)}")


def check_no_cycles(graph: dict[str, set[str]]) -> None:
    cycles = [" -> ".join(cycle) + (f" (in a cycle with {', '.join(m for m in group if m not in cycle)} too)"
                                    if len(group) > len(cycle) - 1 else "") for cycle, group in import_cycles(graph)]
    assert not cycles, "import cycles: " + "; ".join(cycles)


def check_sizes(root: Path, oversized: dict[str, int]) -> None:
    """No module outside ``EXCLUDED`` over ``MAX_LINES``, but those of ``oversized``, within their maxima."""
    lines = {str(path.relative_to(root)): len(path.read_text().splitlines())
             for path in project_modules(root).values()}
    problems = [f"{name}: {n} lines (at most {oversized.get(name, MAX_LINES)})" for name, n in sorted(lines.items())
                if n > oversized.get(name, MAX_LINES)]
    problems += [f"{name}: {lines[name]} lines now: take it off the oversized list" for name in sorted(oversized)
                 if lines.get(name, 0) <= MAX_LINES]
    assert not problems, "\n".join(problems)


def test_every_import_between_packages_points_down():
    check_layers(import_graph(ROOT), LAYERS)


def test_no_module_imports_itself_back():
    check_no_cycles(import_graph(ROOT))


def test_no_module_over_the_line_limit():
    check_sizes(ROOT, OVERSIZED)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checks_name_an_upward_import_a_cycle_and_a_long_module(tmp_path):
    _write(tmp_path, {
        "models/__init__.py": "",
        "models/base.py": "import numpy\nfrom trainer.fit import fit\n",  # upward
        "trainer/__init__.py": "",
        "trainer/fit.py": "from . import loop\n",
        "trainer/loop.py": "def run():\n    from trainer.fit import fit\n" + "x = 1\n" * 400,  # a lazy import closes it
        "trainer/ok.py": "from trainer import fit\nimport models.base\n",  # down: allowed
        "tests/test_x.py": "import trainer.fit\nfrom service import app\n",  # tests may import anything
    })
    graph = import_graph(tmp_path)
    assert graph == {"models": set(), "models.base": {"trainer.fit"}, "trainer": set(),
                     "trainer.fit": {"trainer.loop"}, "trainer.loop": {"trainer.fit"},
                     "trainer.ok": {"trainer.fit", "models.base"}}
    with pytest.raises(AssertionError, match=r"models\.base imports trainer\.fit: models may import no other package"):
        check_layers(graph, LAYERS, set())
    with pytest.raises(AssertionError, match="models.base no longer imports trainer.loop: take it off"):
        check_layers(graph, LAYERS, {("models.base", "trainer.fit"), ("models.base", "trainer.loop")})
    check_layers(graph, LAYERS, {("models.base", "trainer.fit")})  # a known crossing passes
    for importer, imported in (("service.cli", "trainer.loader"), ("trainer.sources", "service.db")):
        with pytest.raises(AssertionError, match=rf"{importer} imports {imported}: {importer.split('.')[0]} may import "
                                                 r"errors, interactions, models, rating_scale, registry, storage\n"):
            check_layers({importer: {imported}}, LAYERS)  # trainer and service never import each other
    with pytest.raises(AssertionError, match=r"registry\.reader imports storage\.tables: registry may import errors, "
                                             r"models\n"):
        check_layers({"registry.reader": {"storage.tables"}}, LAYERS)  # nor does one lower layer reach across
    with pytest.raises(AssertionError, match=r"import cycles: trainer\.fit -> trainer\.loop -> trainer\.fit\n"):
        check_no_cycles(graph)
    graph["trainer.loop"].add("trainer.zz")
    graph["trainer.zz"] = {"trainer.loop"}  # a second cycle through trainer.loop: one group of three
    with pytest.raises(AssertionError, match=r"import cycles: trainer\.fit -> trainer\.loop -> trainer\.fit "
                                             r"\(in a cycle with trainer\.zz too\)\n"):
        check_no_cycles(graph)
    with pytest.raises(AssertionError, match=r"trainer/loop\.py: 402 lines \(at most 400\)"):
        check_sizes(tmp_path, {})
    with pytest.raises(AssertionError, match=r"trainer/loop\.py: 402 lines \(at most 401\)"):
        check_sizes(tmp_path, {"trainer/loop.py": 401})
    check_sizes(tmp_path, {"trainer/loop.py": 402})


def test_layout_and_packages():
    for name in ("errors", "interactions", "models", "rating_scale", "registry", "storage", "trainer", "service",
                 "migrations", "docker", "tests", "bench"):
        assert (ROOT / name).is_dir(), name
    for name in ("docker-compose.yml", "pyproject.toml", "README.md", ".ci/run"):
        assert (ROOT / name).is_file(), name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "errors*", "interactions*", "models*", "rating_scale*", "registry*", "storage*", "trainer*",
        "service*"]
    deps = pyproject["project"]["dependencies"]
    assert "torch==2.13.0" in deps, "a looser torch pin pulls a multi-GB CUDA build"
    unpinned = [d for d in deps if not re.search(r"[<=]", d)]
    assert not unpinned, f"dependencies without an upper bound: {unpinned}"


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert len(commands) == 2, commands
    run_command, test_command = commands
    assert "scripts/run.sh" in run_command and "scripts/test.sh" in test_command
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_databases_and_their_sqlite_journals_are_not_committed():
    import subprocess

    names = ["aerec.db", "aerec.db-wal", "aerec.db-shm", "x.sqlite-wal", "x.sqlite-shm"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == names, ignored.stdout + ignored.stderr
