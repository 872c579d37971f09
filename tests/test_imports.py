"""Imports run one way: no module of src/volgan reaches itself again through its imports (lazy,
function-level and TYPE_CHECKING imports included), and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "volgan").rglob("*.py")):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the volgan modules it imports anywhere in its text (``from volgan import perf``
    is an import of ``volgan.perf``, not of the package)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "volgan":
                subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
                deps |= subs if len(subs) == len(node.names) else subs | {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "volgan"}
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    assert len(edges) > 50 and "volgan.training" in edges["volgan.run_setup"]  # the scan sees the imports
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(n for n in modules() if not n.endswith("__main__"))  # __main__ runs the CLI

    def alone(name: str) -> str | None:  # a fresh interpreter: no module may rely on another run first
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        return f"{name}: {proc.stderr.strip().splitlines()[-1]}" if proc.returncode else None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [f for f in pool.map(alone, names) if f]
    assert not failed, failed
