"""The README and the documentation say what the code does: config keys that exist, the README a
short user guide whose table of expected quality is the measurements' own (every key being
documented: tests/test_config.py)."""

import re
from pathlib import Path

import pytest

from volgan.config import build_config

REPO = Path(__file__).resolve().parents[1]
# pages that describe today's behaviour; the results pages are dated logs and keep the keys of their day
CURRENT = [
    REPO / "README.md",
    REPO / "docs" / "planner.md",
    *sorted((REPO / "docs" / "guide").glob("*.md")),
    *sorted((REPO / "docs" / "reference").glob("*.md")),
]


def _keys() -> tuple[set[str], set[str]]:
    def walk(d: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= walk(v, prefix + k + ".")
        return out

    cfg = build_config({}, "<defaults>").to_dict()
    return walk(cfg), {k for k, v in cfg.items() if isinstance(v, dict)}


def test_pages_checked_exist() -> None:
    names = {p.relative_to(REPO).as_posix() for p in CURRENT}
    assert {"docs/guide/training.md", "docs/reference/config.md", "README.md"} <= names


@pytest.mark.parametrize("page", CURRENT, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_config_key_a_page_names_exists(page: Path) -> None:
    keys, sections = _keys()
    pattern = r"`(?:--set )?((?:" + "|".join(sorted(sections)) + r")\.[a-z0-9_.]*[a-z0-9_])"
    named = re.findall(pattern, page.read_text())
    unknown = sorted(set(named) - keys)
    assert not unknown, f"{page.name} names config keys that do not exist: {unknown}"


def test_readme_is_a_short_guide_with_the_commands_first() -> None:
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300
    first = "\n".join(lines[:40])
    for command in ("make demo", "make test", "volgan train --data scans/", "volgan train --data shapes/"):
        assert command in first, command
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|EPYC|Xeon|(?<![-\w])seeds? \d", text), "no dates, CPU models or seeds"


def test_readme_expected_quality_table_is_the_measurements_own() -> None:
    import subprocess
    import sys

    script = REPO / "benchmarks" / "expected_table.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--check", str(REPO / "README.md")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
