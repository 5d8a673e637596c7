"""Which phantom generator and, for v2, which arm (docs/phantoms.md §v2, Arms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

from instasal.errors import ConfigurationError

__all__ = ["AnatomyChoice", "ContrastArm", "Generator", "PhantomArm"]

Generator: TypeAlias = Literal["v1", "v2"]
ContrastArm: TypeAlias = Literal["standard", "swapped"]
AnatomyChoice: TypeAlias = Literal["drawn", "mni152", "colin27"]


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
        if self.contrast not in get_args(ContrastArm):
            raise ConfigurationError(
                f"contrast must be one of {get_args(ContrastArm)}, got {self.contrast!r}"
            )
        if not isinstance(self.skull_stripped, bool):
            raise ConfigurationError(
                f"skull_stripped must be True or False, got {self.skull_stripped!r}"
            )
        if self.anatomy not in get_args(AnatomyChoice):
            raise ConfigurationError(
                f"anatomy must be one of {get_args(AnatomyChoice)}, got {self.anatomy!r}"
            )
        if not self.skull_stripped and self.anatomy == "mni152":
            raise ConfigurationError(
                "skull_stripped=False needs the Colin27 head (anatomy 'colin27' or 'drawn'); "
                "nilearn's MNI152 is brain-only, got anatomy='mni152'"
            )
