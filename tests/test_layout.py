"""The rooms and their import rules (docs/design.md, "Rooms"): every import of tsa's own code goes
from a room to a room on a lower floor, no module imports one that imports it back, the old
top-level names are gone, and every family name the config accepts has an adapter."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# room -> floor; a room may import only rooms on lower floors (and itself).
FLOORS = {
    "configs": 0, "core": 0,
    "shards": 1, "models": 1, "media": 1, "cluster": 1,
    "pipeline": 2, "train": 2, "view": 2, "evaluate": 2, "testing": 2,
    "cli": 3, "__main__": 4,
}
FOLDER = {"core": "tsa_core"}  # rooms whose folder is not their name
OLD_NAMES = {"tsa_core", "configs", "models", "media", "shards", "cluster", "pipeline", "train", "view",
             "evaluate", "testing", "cli"}


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level and inside functions), absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use tsa.<room>)"
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from tsa.x import module`
    return names


def _modules() -> dict[str, Path]:
    """tsa module name -> file, for every module of the installed package."""
    mods = {"tsa": ROOT / "__init__.py", "tsa.cli": ROOT / "cli.py", "tsa.__main__": ROOT / "__main__.py"}
    for room in FLOORS:
        folder = ROOT / FOLDER.get(room, room)
        if not folder.is_dir():
            continue
        for p in folder.rglob("*.py"):
            parts = p.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            mods[".".join(("tsa", room, *parts))] = p
    return mods


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "tsa"


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(path):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and imp != "tsa":
                deps.add(imp)
        graph[name] = deps
    return graph


def test_every_room_is_a_package_the_wheel_lists():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    rooms = {f"tsa.{r}" for r in FLOORS if (ROOT / FOLDER.get(r, r)).is_dir()}
    assert rooms <= listed, sorted(rooms - listed)
    for r in rooms:
        assert (ROOT / FOLDER.get(r.split(".")[1], r.split(".")[1]) / "__init__.py").is_file(), r
    sub = {p.parent for p in ROOT.glob("*/*/__init__.py") if p.parts[-3] in {FOLDER.get(r, r) for r in FLOORS}}
    assert not sub, f"sub-packages need their own entry in pyproject's packages: {sorted(map(str, sub))}"


def test_imports_go_down_the_floors():
    bad = []
    for mod, deps in _graph().items():
        room = _room(mod)
        for dep in deps:
            other = _room(dep)
            if other != room and FLOORS.get(other, -1) >= FLOORS.get(room, 99):
                bad.append(f"{mod} (floor {FLOORS.get(room)}) imports {dep} (floor {FLOORS.get(other)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_old_top_level_names_are_not_imported():
    """`import pipeline` would still work from a checkout (the repository root is on sys.path),
    and would load a second copy of the module: only `tsa.<room>` names are used anywhere."""
    files = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "build" not in p.parts]
    bad = sorted(f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imports(p) if m.split(".")[0] in OLD_NAMES)
    assert not bad, bad


def test_every_configurable_family_has_an_adapter():
    from tsa.configs.schema import STUDENT_FAMILIES
    from tsa.models.family import FAMILIES, StudentFamily, student_family

    assert set(STUDENT_FAMILIES) == set(FAMILIES)
    for name in STUDENT_FAMILIES:
        family = student_family(name)
        assert isinstance(family, StudentFamily) and family.name == name
