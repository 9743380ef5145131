"""The package's layers, read from every import in the source (function-level ones included):
a module imports only from its own layer or those below it, and no module imports one that
imports it back.

    helpers (errors, fileio, config, device, progress, hub, checkpoint_names, distributed, unpickle)
    < model, data (neither imports the other)
    < weights (pretrained formats, onto the model)
    < engine (training and evaluation), inference (the predictor, pictures, export, the web
      app): neither imports the other
    < commands (vglaw.commands: demo, eval, predict, visualize; the CLI; the package's lazy root)
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vglaw"
RANKS = {"model": 1, "data": 1, "weights": 2, "engine": 3, "inference": 3, "commands": 4, "cli": 4,
         "__main__": 4, "__init__": 4}
SIBLINGS = (1, 3)  # ranks whose layers must not import each other


def layer(module: str) -> str:
    """``vglaw.engine.loop`` -> ``engine``; top-level helper modules -> ``helpers``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else "helpers"


def imports(path: Path) -> set[str]:
    """Every vglaw module ``path`` imports, with relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vglaw")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vglaw"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names
                          if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()}
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own_module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = "__init__" if own_module == "vglaw.__init__" else layer(own_module)
        for target in imports(path):
            theirs = layer(target)
            rank_own, rank_theirs = RANKS.get(own, 0), RANKS.get(theirs, 0)
            if rank_theirs > rank_own or (rank_own == rank_theirs in SIBLINGS and own != theirs):
                wrong.append(f"{own_module} ({own}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def module_name(path: Path) -> str:
    """``vglaw/model/io.py`` -> ``vglaw.model.io``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the vglaw modules it imports}, every import in the file counted (function-level ones too)."""
    graph = {module_name(path): set() for path in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        graph[module] = {target for target in imports(path) if target in graph and target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_circle_of_imports():
    """No vglaw module imports, even inside a function, one that imports it back (directly or
    through others): a circle means one concept has two homes."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)
