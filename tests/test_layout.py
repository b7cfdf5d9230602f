"""The rooms' import rules (docs/families.md, "Adding a family"): configs/ imports nothing of
pipeline/, train/, models/ or evaluate/; every family name the config accepts has an adapter."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_configs_import_nothing_of_the_other_rooms():
    rooms = ("pipeline", "train", "models", "evaluate")
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "configs").rglob("*.py")
           for m in _imported_modules(p) if m.split(".")[0] in rooms}
    assert not bad, sorted(bad)


def test_model_code_lives_in_models():
    bad = {f"{p.relative_to(ROOT)}: {m}" for room in ("tsa_core", "models") for p in (ROOT / room).rglob("*.py")
           for m in _imported_modules(p) if m.split(".")[0] in ("train", "evaluate")}
    assert not bad, sorted(bad)


def test_every_configurable_family_has_an_adapter():
    from configs.schema import STUDENT_FAMILIES
    from models.family import FAMILIES, StudentFamily, student_family

    assert set(STUDENT_FAMILIES) == set(FAMILIES)
    for name in STUDENT_FAMILIES:
        family = student_family(name)
        assert isinstance(family, StudentFamily) and family.name == name
