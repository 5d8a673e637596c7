"""Lesion regions of a finished cohort run, read from each subject's whole-brain region atlas.

A run explained with a lesion-only region map (or none) leaves false positives and TN domains
without a region. Region-wise analyses (FP pruning per region, issue 8 Q2) need every domain's
region; the saliency does not depend on it, so it is assigned afterwards from the instance label
map the run wrote and the dataset's region atlas (``desc-regions_dseg``), by the same majority rule
as :func:`instasal.pipeline.per_lesion.region_of`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from instasal.analyses._table import require_columns
from instasal.dataset import discover_dataset
from instasal.errors import ConfigurationError
from instasal.io import load_image, load_labels
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.per_lesion import region_of
from instasal.typing import PathLike

__all__ = ["assign_regions"]


def assign_regions(table: pd.DataFrame, cohort_out: PathLike, dataset: PathLike) -> pd.DataFrame:
    """A copy of a cohort lesion table whose ``region`` column comes from the region atlas.

    Parameters
    ----------
    table
        The cohort's lesion table (``subject``, ``id``, ``region``).
    cohort_out
        The cohort output folder (one ``<subject>/<subject>_desc-instances_dseg`` per subject).
    dataset
        The BIDS-like dataset the cohort ran on; each subject needs a region map, preferably the
        whole-brain atlas ``desc-regions_dseg``.

    Raises
    ------
    ConfigurationError
        When a subject of the table is missing from ``dataset``, has no region map, or its
        instance label map is missing; the message names the file.
    ImageError
        When a region atlas is not a label image or lies on another grid (shape, orientation or
        voxel size) than the run's instance map.
    """
    require_columns(table, ["subject", "id", "region"])
    files = {s.subject_id: s for s in discover_dataset(dataset)}
    regions = table["region"].astype(str).to_numpy(copy=True)
    subjects = table["subject"].astype(str).to_numpy()
    ids = table["id"].to_numpy(dtype=int)
    for subject_id in sorted(set(subjects)):
        if subject_id not in files:
            raise ConfigurationError(f"{dataset}: has no subject {subject_id} of the lesion table")
        region_map_path = files[subject_id].region_map
        if region_map_path is None:
            raise ConfigurationError(
                f"{dataset}: subject {subject_id} has no region map (desc-regions_dseg)"
            )
        instances_path = RunLayout(Path(cohort_out) / subject_id, subject_id).instances
        if not instances_path.exists():
            raise ConfigurationError(f"{instances_path}: instance label map is missing")
        labels = np.asarray(load_image(instances_path).dataobj)
        atlas = load_labels(region_map_path, instances_path, role="region atlas")
        for row in np.flatnonzero(subjects == subject_id):
            regions[row] = region_of(atlas, np.asarray(labels == ids[row]))
    return table.assign(region=regions)
