"""The package's import structure (docs/python-api.md): each package imports only the
ones below it, function-level imports included, and no private name crosses a package."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bortsearch"

# lowest first; a module may import from its own layer or any layer before it
LAYERS = [
    {"errors", "runio", "allocator", "determinism", "process", "config"},
    {"data"},
    {"model"},
    {"deploy"},
    {"train"},
    {"search"},
    {"downstream"},
    {"cli"},
]


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _imports():
    """(importing module's top-level part, imported module, imported names) for every
    `import`/`from` of bortsearch inside bortsearch/, at any depth of the code."""
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the public API imports from everything
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bortsearch."):
                yield parts[0], node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("bortsearch."):
                        yield parts[0], a.name, []


def test_every_module_has_a_layer():
    parts = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in PACKAGE.rglob("*.py")}
    assert parts - {"__init__"} <= set().union(*LAYERS)


def test_packages_import_only_downwards():
    upward = [(mine, module) for mine, module, _ in _imports()
              if _layer(module.split(".")[1]) > _layer(mine)]
    assert upward == []


def test_no_private_name_crosses_a_package():
    crossing = [(mine, module, name) for mine, module, names in _imports() for name in names
                if name.startswith("_") and module.split(".")[1] != mine]
    assert crossing == []


def test_no_module_imports_itself_through_others():
    """No cycle among the modules (within a package as well)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        me = ".".join(("bortsearch", *parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bortsearch."):
                graph.setdefault(me, set()).add(node.module)
    seen, cycles = {}, []

    def visit(m, stack):
        seen[m] = "open"
        for n in sorted(graph.get(m, ())):
            if seen.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in seen:
                visit(n, stack + [n])
        seen[m] = "done"

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    assert cycles == []
