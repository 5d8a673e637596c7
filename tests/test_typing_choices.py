"""Choice types (``Literal`` aliases) are written once, in :mod:`instasal.typing` (layer 0).

A module that offers a user a choice imports its ``Literal`` from there; the few still defined
elsewhere are listed here with the reason, so a new one fails this test until it moves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import instasal
from instasal import instances, typing
from instasal.models import cards
from instasal.phantoms import arms
from instasal.saliency import config

# Module (relative to the package) → Literal aliases it may still define, and why.
ALLOWED_ELSEWHERE = {
    # Internal to the v2 lesion generator: no user chooses a shape, the parameters draw it.
    "phantoms/lesions_v2.py": {"ShapeKind"},
}


def _literal_aliases(path: Path) -> set[str]:
    """Names assigned a ``Literal[...]`` at module level (``X = Literal[...]`` or annotated)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Subscript)
            and isinstance(value.value, ast.Name)
            and value.value.id == "Literal"
        ):
            names.add(target.id)
    return names


def test_literal_choices_are_defined_only_in_instasal_typing() -> None:
    root = Path(instasal.__file__).parent
    found = {
        str(path.relative_to(root)): names
        for path in sorted(root.rglob("*.py"))
        if path.name != "typing.py" or path.parent != root
        if (names := _literal_aliases(path))
    }
    unexpected = {
        module: names - ALLOWED_ELSEWHERE.get(module, set())
        for module, names in found.items()
        if names - ALLOWED_ELSEWHERE.get(module, set())
    }
    assert unexpected == {}
    # The finder sees the ones it should: it is not passing for finding nothing.
    assert _literal_aliases(root / "typing.py") >= {"InstanceKind", "LesionRegion", "Aggregation"}


def test_old_homes_re_export_the_same_objects() -> None:
    assert instances.InstanceKind is typing.InstanceKind
    assert cards.Normalisation is typing.Normalisation
    assert arms.ContrastArm is typing.ContrastArm
    assert config.CamVariant is typing.CamVariant
