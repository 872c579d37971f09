"""The shape the code keeps: short functions, a small Trainer, family steps that never see it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "volgan"
MAX_FUNCTION_LINES = 80
MAX_TRAINER_LINES = 250


def _functions() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef, list[str]]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((path, node, lines))
    return out


def test_no_function_is_longer_than_80_lines_without_a_reason_beside_it() -> None:
    long = []
    for path, node, lines in _functions():
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        reason = lines[first - 2].strip() if first >= 2 else ""
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and not reason.startswith("# long: "):
            long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines with no '# long: <reason>' line above: {long}"


def test_the_trainer_is_at_most_250_lines() -> None:
    tree = ast.parse((SRC / "training.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    assert trainer.end_lineno - trainer.lineno + 1 <= MAX_TRAINER_LINES


def test_the_family_steps_and_their_services_never_see_a_trainer() -> None:
    for name in ("updates.py", "run_services.py", "schedule.py", "loop.py"):
        tree = ast.parse((SRC / name).read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "Trainer" not in names | imported and "trainer" not in names, name
