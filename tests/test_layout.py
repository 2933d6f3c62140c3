"""The project's shape: dependency direction, packaging pins, the README's two commands."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_import_neither_trainer_nor_service():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & {"trainer", "service"})
        for path in (ROOT / "models").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_rating_scale_is_below_trainer_and_service():
    imported = set().union(*(_imported_top_levels(path) for path in (ROOT / "rating_scale").rglob("*.py")))
    assert not imported & {"models", "trainer", "service"}


def test_layout_and_packages():
    for name in ("models", "rating_scale", "trainer", "service", "migrations", "docker", "tests", "bench"):
        assert (ROOT / name).is_dir(), name
    for name in ("docker-compose.yml", "pyproject.toml", "README.md", ".ci/run"):
        assert (ROOT / name).is_file(), name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "models*", "rating_scale*", "trainer*", "service*"]
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
