"""The package's layers, read from every import in the source (function-level ones included):
a module imports only from its own layer or those below it.

    helpers (errors, fileio, config, device, progress, hub, distributed, unpickle)
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
