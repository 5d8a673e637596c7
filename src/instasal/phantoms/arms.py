"""Which phantom generator and, for v2, which arm (docs/phantoms.md §v2, Arms)."""

from __future__ import annotations

from dataclasses import dataclass

from instasal.errors import ConfigurationError
from instasal.typing import AnatomyChoice, ContrastArm, Generator, check_choice

__all__ = ["AnatomyChoice", "ContrastArm", "Generator", "PhantomArm"]


@dataclass(frozen=True)
class PhantomArm:
    """A v2 arm.

    Attributes
    ----------
    contrast
        ``"standard"``: FLAIR and T1w lesion contrasts over their real ranges; ``"swapped"``: the
        control arm, weak FLAIR and strong T1w lesions (same seed, same subject otherwise).
    skull_stripped
        ``True``: brain-extracted (background 0, the mask keeps a band of extracerebral CSF);
        ``False``: the whole head (Colin27 anatomy, 2 mm only).
    anatomy
        ``"mni152"``, ``"colin27"`` (2 mm only), or ``"drawn"``: even odds per seed at 2 mm,
        MNI152 at 1 mm.
    """

    contrast: ContrastArm = "standard"
    skull_stripped: bool = True
    anatomy: AnatomyChoice = "drawn"

    def __post_init__(self) -> None:
        check_choice("contrast", self.contrast, ContrastArm)
        if not isinstance(self.skull_stripped, bool):
            raise ConfigurationError(
                f"skull_stripped must be True or False, got {self.skull_stripped!r}"
            )
        check_choice("anatomy", self.anatomy, AnatomyChoice)
        if not self.skull_stripped and self.anatomy == "mni152":
            raise ConfigurationError(
                "skull_stripped=False needs the Colin27 head (anatomy 'colin27' or 'drawn'); "
                "nilearn's MNI152 is brain-only, got anatomy='mni152'"
            )
