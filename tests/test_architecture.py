"""The layers of docs/architecture.md, checked on the source: imports only point down, and
no module of src/zerok takes part in an import cycle.

Every ``import`` and ``from ... import`` statement counts, also those inside functions or
under ``TYPE_CHECKING``: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zerok

SRC = Path(zerok.__file__).resolve().parent

# Bottom to top. A module may import from its own layer and from the layers below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("zerok.errors", "zerok.version"),
    ("zerok.wire",),
    ("zerok.crypto",),
    ("zerok.protocol",),
    ("zerok.transport",),
    ("zerok.relay", "zerok.client"),
    ("zerok.cli", "zerok.testing", "zerok.blocking", "zerok.__main__", "zerok"),
)
# Peers in one layer that must not know each other: the relay and the client share only
# what lies below them.
APART = (("zerok.relay", "zerok.client"),)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The zerok modules ``module`` imports (a name imported from a package is the
    submodule when there is one by that name)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    best, index = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index >= 0, f"{module} belongs to no layer of docs/architecture.md"
    return index


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = [target for target in sorted(GRAPH[module]) if _layer(target) > _layer(module)]
    assert not upward, f"{module} imports from a higher layer: {upward}"
    for a, b in APART:
        for source, target in ((a, b), (b, a)):
            if _within(module, source):
                crossing = [t for t in GRAPH[module] if _within(t, target)]
                assert not crossing, (
                    f"{module} imports {crossing}: {source} and {target} stay apart"
                )


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_checker_sees_a_cycle() -> None:
    # The checks above must be able to fail: a cycle added to a copy of the graph is found.
    GRAPH["zerok.wire.codes"].add("zerok.wire.codec")
    GRAPH["zerok.wire.codec"].add("zerok.wire.codes")
    try:
        assert any({"zerok.wire.codec", "zerok.wire.codes"} <= set(c) for c in _cycles())
    finally:
        GRAPH["zerok.wire.codes"] = _imports("zerok.wire.codes")
        GRAPH["zerok.wire.codec"] = _imports("zerok.wire.codec")
