"""Phantom MS cohort on real anatomy: generated subjects with ground truth (issue 3 §4; v2: §v2 of
docs/phantoms.md, issue 28).

No MS MRI can be had offline, so instasal makes its default data: the MNI152 2009 template shipped
with nilearn, warped per subject, re-contrasted into FLAIR and T1w, with white-matter lesions where
MS puts them and FLAIR hyperintensities that are not lesions.
"""

from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.bids_writer import write_cohort
from instasal.phantoms.lesion_placement import REGION_LABELS, Lesion
from instasal.phantoms.subject import PhantomSubject, generation_parameters, make_phantom
from instasal.typing import LesionRegion

__all__ = [
    "REGION_LABELS",
    "Lesion",
    "LesionRegion",
    "PhantomArm",
    "PhantomSubject",
    "generation_parameters",
    "make_phantom",
    "write_cohort",
]
