"""The import graph: modules on floors, each importing only from its own floor or below, and no cycle (the README's
"Architecture" draws the floors)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "synthaug"

# module (or package prefix) -> floor; a package prefix covers its modules
FLOORS = {
    "synthaug.errors": 0, "synthaug.words": 0, "synthaug.files": 0, "synthaug.cache": 0, "synthaug.progress": 0,
    "synthaug.seeds": 0, "synthaug.device": 0, "synthaug.version": 0, "synthaug.provenance": 0,
    "synthaug.recipe": 1, "synthaug.data.config": 1,
    "synthaug.data": 2, "synthaug.conditions": 2, "synthaug.images": 2, "synthaug.augmentation": 2, "synthaug.grids": 2,
    "synthaug.runs": 3, "synthaug.fid": 3, "synthaug.probe_features": 3, "synthaug.weights": 3,
    "synthaug.generator": 4, "synthaug.classifier": 4, "synthaug.shards": 4,
    "synthaug.synthesis": 5, "synthaug.filtering": 5, "synthaug.quality": 5, "synthaug.memorization": 5,
    "synthaug.torch_datasets": 5, "synthaug.inspection": 5,
    "synthaug.benchmark": 6, "synthaug.report": 6,
    "synthaug.cli": 7, "synthaug.__main__": 7, "synthaug": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def floor(module: str) -> int:
    name = module
    while name not in FLOORS:
        name = name.rsplit(".", 1)[0]
    return FLOORS[name]


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or None


def imports(module: str) -> set[str]:
    """The synthaug modules ``module`` imports, at module level or in functions; not those only type checkers see."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("synthaug"):
            out |= {resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.startswith("synthaug")}
    return {m for m in out if m and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def is_package_export(module: str, target: str) -> bool:
    """A package's __init__ importing its own modules, to name them (synthaug.data re-exports load_dataset)."""
    return MODULES[module].name == "__init__.py" and target.startswith(module + ".")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_goes_to_the_same_floor_or_below(module):
    upward = sorted(t for t in GRAPH[module] if floor(t) > floor(module) and not is_package_export(module, t))
    assert not upward, f"{module} (floor {floor(module)}) imports {upward} from higher floors"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in GRAPH[m]:
            if is_package_export(m, t):
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_the_classifier_and_the_decode_cache_are_imported_only_where_they_belong():
    classifier_users = {m for m, targets in GRAPH.items() if "synthaug.classifier" in targets}
    assert all(m.startswith("synthaug.benchmark") or m == "synthaug.filtering" for m in classifier_users), classifier_users
    decode_cache_users = {m for m, targets in GRAPH.items() if "synthaug.data.cache" in targets}
    assert all(m.startswith("synthaug.data") for m in decode_cache_users), decode_cache_users
