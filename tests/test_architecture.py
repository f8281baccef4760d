"""The layout stays true: every import points down the layers, nothing imports in a circle, no private borrowing.

Imports are read from the source (``ast``), including those inside functions, so a cycle cannot hide in a
function body. The layers, lowest first, are :data:`LAYERS`; a module may import from its own layer or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Module-name prefixes, lowest layer first (a longer prefix wins over a shorter one).
LAYERS = [
    ("influence_core.errors", "influence_core.cache", "influence_core.version"),
    ("influence_core.engine",),
    ("influence_core.sources",),
    ("influence_core.training",),
    ("influence_core.mislabel", "influence_core.lds"),
    ("influence_core.demo",),
    ("influence_core",),  # the package's public API re-exports what is below it
    ("influence_core.cli", "influence_core.__main__"),
    ("explorer",),
    ("explorer.ui",),
    ("pages", "app"),
]
STREAMLIT_ALLOWED = ("explorer.ui", "pages", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("influence_core/**/*.py"), *ROOT.glob("explorer/**/*.py"), *ROOT.glob("pages/*.py"),
             ROOT / "app.py"]
    return {module_name(path): path for path in files}


MODULES = project_modules()


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            found.append((base, names, node.lineno))
            # ``from package import module`` imports the module too
            found += [(f"{base}.{name}", [], node.lineno) for name in names if f"{base}.{name}" in MODULES]
    return found


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{name} is in no layer; add it to LAYERS")
    return best


def internal(name: str) -> str | None:
    """The project module ``name`` refers to (itself, or the package it is in), or None for a third party."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in imports_of(path):
            resolved = internal(target)
            if resolved and resolved != name:
                edges[name].add(resolved)
    return edges


def test_every_import_points_down_the_layers():
    upward = []
    for name, path in MODULES.items():
        for target, _, line in imports_of(path):
            resolved = internal(target)
            if resolved and resolved != name and layer_of(resolved) > layer_of(name):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {resolved}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def cycles_in(edges: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk meets, as ``a -> b -> a``. A package's ``__init__`` importing its own
    submodules is not counted (that is how a package re-exports)."""
    packages = {m.rpartition(".")[0] for m in edges}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if node in packages and nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle():
    cycles = cycles_in(graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    borrowed = []
    for name, path in MODULES.items():
        for target, names, line in imports_of(path):
            resolved = internal(target)
            if resolved is None or resolved == name:
                continue
            private = [n for n in names if n.startswith("_") and n not in ("__version__",)]
            if private:
                borrowed.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {resolved}")
    assert not borrowed, "\n".join(borrowed)


@pytest.mark.parametrize("forbidden", ["streamlit", "explorer", "pages"])
def test_the_library_never_imports_the_app(forbidden):
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in MODULES.items() if name.startswith("influence_core")
        for target, _, line in imports_of(path) if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert not offenders, offenders


def test_only_the_ui_layer_imports_streamlit():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in MODULES.items()
        if not any(name == p or name.startswith(p + ".") for p in STREAMLIT_ALLOWED)
        for target, _, line in imports_of(path) if target.split(".")[0] == "streamlit"
    ]
    assert not offenders, offenders


def test_pages_hold_only_screens():
    """Every file in pages/ is a screen app.py navigates to."""
    app = (ROOT / "app.py").read_text(encoding="utf-8")
    screens = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert screens and all(f'"pages/{name}"' in app for name in screens), screens


def test_the_checker_sees_a_planted_cycle_and_an_upward_import():
    """The checks can fail: data -> demo -> finetune -> data (the cycle this layout removed) is found, and an
    engine module importing the demo points up."""
    planted = {"influence_core.sources.data": {"influence_core.demo"},
               "influence_core.demo": {"influence_core.training.finetune"},
               "influence_core.training.finetune": {"influence_core.sources.data"}}
    assert cycles_in(planted) == [
        "influence_core.demo -> influence_core.training.finetune -> influence_core.sources.data -> influence_core.demo"
    ]
    assert layer_of("influence_core.demo") > layer_of("influence_core.engine.influence")
    assert layer_of("explorer.ui") > layer_of("explorer.spec") > layer_of("influence_core.cli.fit")
