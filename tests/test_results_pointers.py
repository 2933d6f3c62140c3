"""Every comment, docstring or doc that points to a section of bench/RESULTS.md names a heading that exists."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
SKIP_DIRS = {".git", ".venv", "node_modules", "out", "__pycache__", ".pytest_cache"}
# a pointer: RESULTS.md, then the section names in double quotes ("A" or "A", "B"), as comments and docs write it
POINTER = re.compile(r'RESULTS\.md`?\)?,?\s*\(?((?:"[^"\n]+"(?:,\s*)?)+)')


def headings(markdown: str) -> list[str]:
    return [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")]


def pointers(text: str) -> list[str]:
    joined = re.sub(r"\n\s*#?\s*", " ", text)  # a pointer may wrap onto the next comment or docstring line
    return [name for group in POINTER.findall(joined) for name in re.findall(r'"([^"]+)"', group)]


def missing(names: list[str], heads: list[str]) -> list[str]:
    return [name for name in names if not any(head.startswith(name) for head in heads)]


def pointing_files() -> list[Path]:
    found, this = [], Path(__file__).resolve()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # never walk a virtual environment
        for name in files:
            path = Path(folder) / name
            if path.suffix in (".py", ".md", ".html", ".toml") and path not in (RESULTS, this):
                found.append(path)
    return found


def test_every_pointer_to_a_results_section_names_one_that_exists():
    heads = headings(RESULTS.read_text())
    checked, broken = 0, []
    for path in pointing_files():
        names = pointers(path.read_text(errors="replace"))
        checked += len(names)
        broken += [f"{path.relative_to(ROOT)}: {name!r}" for name in missing(names, heads)]
    assert checked > 30, f"only {checked} pointers found: the pattern no longer matches how the code points"
    assert not broken, "pointers to sections bench/RESULTS.md does not have:\n" + "\n".join(broken)


def test_the_check_reads_wrapped_and_double_pointers_and_names_a_missing_section():
    text = ('x = 1  # cheaper (bench/RESULTS.md,\n    # "Larger batches"); see `bench/RESULTS.md`, "A", "Gone"\n'
            '"""docs (bench/RESULTS.md, "Figures moved out")."""')
    names = pointers(text)
    assert names == ["Larger batches", "A", "Gone", "Figures moved out"]
    heads = headings("# Results\n## Larger batches on ml-100k\n### A\n## Figures moved out of code comments\n")
    assert missing(names, heads) == ["Gone"]
