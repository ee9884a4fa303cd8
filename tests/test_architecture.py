"""The layers stay visible: nothing imports upward, no module imports itself back through others, and
only the registry lists algorithms (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from align_recipes.registry import ALGORITHMS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "align_recipes"

# Top to bottom; a module may import from its own layer and the layers below it.
LAYERS = [
    ("cli", {"cli", "__main__"}),
    ("results", {"results"}),
    ("run", {"run"}),
    ("plan", {"plan"}),
    ("parts", {"data", "rl", "rewards", "reward_builtins", "reward_model", "tiny", "model_scores"}),
    (
        "base",
        {
            "registry",
            "errors",
            "fields",
            "paths",
            "redaction",
            "deferred",
            "stats",
            "reproducible",
            "console",
            "__init__",
        },
    ),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def imports(path: Path) -> set[str]:
    """Every align_recipes module `path` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("align_recipes")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("align_recipes"):
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules} - {module_name(path)}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_nothing_imports_upward():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) < layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    """A module never reaches itself through what it imports (package __init__ re-exports aside)."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [t for t in GRAPH[start] if not GRAPH_IS_PACKAGE_OF(t, start)]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo += [t for t in GRAPH.get(module, ()) if not GRAPH_IS_PACKAGE_OF(t, module)]
        return seen

    circles = sorted(m for m in GRAPH if not m.endswith("__init__") and m in reach(m))
    assert not circles, f"modules that import themselves back: {circles}"


def GRAPH_IS_PACKAGE_OF(target: str, module: str) -> bool:  # noqa: N802 - reads as a predicate
    """`from align_recipes.run import x` inside align_recipes.run.y names the package, not a cycle."""
    return module.startswith(target + ".")


def test_only_the_registry_lists_algorithms():
    names = set(ALGORITHMS)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {
                    e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                }
                if len(values & names) >= 2:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {sorted(values & names)}")
            elif isinstance(node, ast.Dict):
                keys = {
                    k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                }
                if len(keys & names) >= 2:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {sorted(keys & names)}")
    assert not offenders, "\n".join(offenders)


def callbacks_defined_in_functions(source: str, where: str = "<source>") -> list[str]:
    """Classes defined inside a function body that subclass TrainerCallback, directly or through one of
    this source's own top-level subclasses (built per call, they hide from imports, types and tests)."""
    tree = ast.parse(source)

    def base_names(node: ast.ClassDef) -> set[str]:
        return {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}

    callback_names = {"TrainerCallback"}
    top = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    while grown := {n.name for n in top if base_names(n) & callback_names} - callback_names:
        callback_names |= grown
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.ClassDef) and base_names(node) & callback_names:
                    found.append(f"{where}:{node.lineno}: {node.name} inside {func.name}()")
    return found


def test_trainer_callbacks_are_top_level_classes():
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in callbacks_defined_in_functions(path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert not found, "\n".join(found)


def test_the_callback_check_finds_a_nested_callback():
    nested = (
        "from transformers import TrainerCallback\n"
        "class Hooks(TrainerCallback):\n    pass\n"
        "def build():\n    class Watch(Hooks):\n        pass\n    return Watch()\n"
        "def other():\n    class Plain:\n        pass\n"
    )
    assert callbacks_defined_in_functions(nested) == ["<source>:5: Watch inside build()"]
