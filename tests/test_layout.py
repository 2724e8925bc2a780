"""The code's shape, as docs/architecture.md draws it: imports run one way (no cycle between modules, none between
the sub-packages of lightning_modules), and files stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("lightning_modules", "datamodules", "experiments", "kernels")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `path` imports anywhere in it (function-level imports included): for
    `from a.b import c`, a.b.c where that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found |= subs
            if len(subs) < len(node.names):  # some names are the module's own
                found.add(node.module)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_imports_run_one_way():
    modules = _modules()
    graph = {m: {i for i in _imports(p, modules) if i != m and not m.startswith(i + ".")} for m, p in modules.items()}
    # a package's __init__ is run by importing any module under it; an edge into a package's own children is not
    # a cycle back, so it is left out above
    assert _cycle(graph) is None, _cycle(graph)

    def part(module: str) -> str:
        """lightning_modules' sub-package of a module (nets, io, callbacks, metrics, weights), else `top`."""
        parts = module.split(".")
        return parts[1] if (ROOT / "lightning_modules" / parts[1]).is_dir() else "top"

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module.startswith("lightning_modules."):
            for target in targets:
                if target.startswith("lightning_modules.") and part(target) != part(module):
                    packages.setdefault(part(module), set()).add(part(target))
    assert _cycle(packages) is None, _cycle(packages)
    assert "top" not in set().union(*packages.values())  # nothing below the LightningModules imports them


def test_no_file_in_the_packages_is_over_450_lines():
    """The StyleGAN2 network definitions are the one exception (NVlabs keeps them in one file too)."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > 450 and path.name != "stylegan2.py"
    }
    assert not long, long


def test_no_function_is_over_60_lines():
    """The Hydra entry points (`@hydra.main`) aside: each is its command's whole surface."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                entry = any("hydra.main" in ast.unparse(d) for d in node.decorator_list)
                if node.end_lineno - node.lineno + 1 > 60 and not entry:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long
