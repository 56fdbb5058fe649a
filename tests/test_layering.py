"""The package layering of DESIGN.md, checked on every import (function-local ones too) with `ast`:
no import cycle between modules or packages, and no layer importing one above it."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxface"

# Lowest first. A module may import its own layer and the layers before it.
LAYERS = (
    ("base", ("kernels", "parallel", "files", "faults", "config", "plots", "registry")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("train", ("train",)),
    ("evaluate", ("evaluate",)),
    ("statistics", ("cgmm",)),
    ("inversion", ("invert",)),
    ("applications", ("generate", "serve", "bench", "experiments", "report", "demo")),
    ("command line", ("cli", "__main__")),
)
LAYER_OF = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("jaxface",) + path.relative_to(PACKAGE).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules) -> dict[str, set[str]]:
    """module -> the jaxface modules it imports (a package's __init__ is not an edge)."""
    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")[: None if is_package else -1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = resolve(name) if name.startswith("jaxface") else None
                if target and target != module and modules[target].name != "__init__.py":
                    edges[module].add(target)
    return edges


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _part(module: str) -> str:
    return module.split(".")[1]


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, _imports(modules)


def test_no_import_cycles_between_modules_or_packages(graph):
    _, edges = graph
    packages: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if _part(a) != _part(b):
                packages.setdefault(_part(a), set()).add(_part(b))
    print("\npackage layering (lowest first):")
    for name, parts in LAYERS:
        uses = sorted({p for part in parts for p in packages.get(part, ())} - set(parts))
        print(f"  {name:13s} {', '.join(parts):40s} imports {', '.join(uses) or '-'}")
    assert _cycles(edges) == []
    assert _cycles(packages) == []


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    assert sorted({_part(m) for m in modules if m != "jaxface"} - set(LAYER_OF)) == []


def test_no_layer_imports_one_above_it(graph):
    """Leaf modules (importing nothing of jaxface, such as evaluate.metrics) may serve any layer."""
    _, edges = graph
    upward = [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
              if LAYER_OF[_part(b)] > LAYER_OF[_part(a)] and edges[b]]
    assert upward == []
