"""Where an explain run writes what: BIDS-derivatives-style names, per-lesion records, the table.

Every file is written atomically; a lesion's summary record is written last, after its maps, so its
presence (with the run's key) means the lesion is complete and can be reused on resume.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from instasal.errors import InstasalWarning, OutputExistsError, StateFileError
from instasal.folders import read_state_file, refuse_writing_over_inputs
from instasal.instances import PREDICTED_KINDS
from instasal.io import atomic_write_json, atomic_write_text

__all__ = [
    "COHORT_TRUST_TABLES",
    "PREDICTED_KINDS",
    "RunLayout",
    "explained_disagrees",
    "instances_lookup",
    "prepare_run_folder",
    "remove_run",
    "table_sidecar",
    "write_json_unless_same",
    "write_text_unless_same",
]

COHORT_TRUST_TABLES = ("profiles", "trust_randomisation", "trust_curves")
"""The per-subject trust TSVs (``<subject>_<name>.tsv``) a cohort run with ``--trust`` gathers
into ``<name>.tsv`` and ``instasal analyse`` reads."""


@dataclass(frozen=True)
class RunLayout:
    """The files of one subject's explain run under ``root``."""

    root: Path
    label: str

    @property
    def lesion_dir(self) -> Path:
        return self.root / "lesions"

    @property
    def probability(self) -> Path:
        return self.root / f"{self.label}_desc-lesion_probseg.nii.gz"

    @property
    def mask(self) -> Path:
        return self.root / f"{self.label}_desc-lesion_mask.nii.gz"

    @property
    def instances(self) -> Path:
        return self.root / f"{self.label}_desc-instances_dseg.nii.gz"

    @property
    def instances_lookup(self) -> Path:
        return self.root / f"{self.label}_desc-instances_dseg.tsv"

    @property
    def table(self) -> Path:
        return self.root / f"{self.label}_lesions.tsv"

    @property
    def table_sidecar(self) -> Path:
        return self.root / f"{self.label}_lesions.json"

    @property
    def profiles(self) -> Path:
        return self.root / f"{self.label}_profiles.tsv"

    @property
    def trust_randomisation(self) -> Path:
        return self.root / f"{self.label}_trust_randomisation.tsv"

    @property
    def trust_curves(self) -> Path:
        return self.root / f"{self.label}_trust_curves.tsv"

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def lesion_prefix(self, lesion_id: int) -> Path:
        return self.lesion_dir / f"{self.label}_lesion-{lesion_id:03d}"

    def smoothgrad(self, lesion_id: int, channel: str) -> Path:
        return Path(f"{self.lesion_prefix(lesion_id)}_desc-smoothgrad{channel}_saliency.nii.gz")

    def gradcam(self, lesion_id: int, normalised: bool = False) -> Path:
        desc = "gradcamppnorm" if normalised else "gradcampp"
        return Path(f"{self.lesion_prefix(lesion_id)}_desc-{desc}_saliency.nii.gz")

    def lesion_record(self, lesion_id: int) -> Path:
        return Path(f"{self.lesion_prefix(lesion_id)}_summary.json")

    def written_files(self) -> list[Path]:
        """Every file a run writes here: the subject's files, and its lesions' files found now."""
        fixed = [
            self.probability,
            self.mask,
            self.instances,
            self.instances_lookup,
            self.table,
            self.table_sidecar,
            self.profiles,
            self.trust_randomisation,
            self.trust_curves,
            self.manifest,
            self.provenance,
            self.report,
        ]
        lesion_files = (
            sorted(self.lesion_dir.glob(f"{self.label}_lesion-*"))
            if self.lesion_dir.exists()
            else []
        )
        return fixed + lesion_files

    def owned_files(self) -> list[Path]:
        """Every file a previous run may have left here (removed before an overwrite)."""
        return [path for path in self.written_files() if path.exists()]

    def read_table(self) -> pd.DataFrame:
        """The lesion table as written (``n/a`` read as missing)."""
        return pd.read_csv(self.table, sep="\t", na_values=["n/a"], keep_default_na=False)

    def read_lesion_record(self, lesion_id: int, key: str) -> dict[str, Any] | None:
        """The stored record of a lesion when it was completed by a run with ``key``."""
        path = self.lesion_record(lesion_id)
        if not path.exists():
            return None
        try:
            record = read_state_file(path, recovery="recomputing this lesion")
        except StateFileError as error:
            warnings.warn(str(error), InstasalWarning, stacklevel=2)
            return None
        if record.get("run_key") != key:
            return None
        files = [Path(p) for p in record.get("files", [])]
        if not all((self.root / p).exists() for p in files):
            return None
        return dict(record)

    def write_lesion_record(self, lesion_id: int, record: dict[str, Any]) -> None:
        atomic_write_json(self.lesion_record(lesion_id), record, overwrite=True)

    def write_table(self, table: pd.DataFrame, sidecar: dict[str, Any]) -> None:
        atomic_write_text(
            self.table, table.to_csv(sep="\t", index=False, na_rep="n/a"), overwrite=True
        )
        atomic_write_json(self.table_sidecar, sidecar, overwrite=True)

    def write_instances_lookup(self, lookup: pd.DataFrame) -> None:
        atomic_write_text(
            self.instances_lookup, lookup.to_csv(sep="\t", index=False), overwrite=True
        )


def prepare_run_folder(
    layout: RunLayout, key: str, overwrite: bool, inputs: Sequence[Path]
) -> bool:
    """Check an explain run's folder before anything is written there; True when a finished run
    with ``key`` is there already (the caller then leaves every file as it is).

    No file the run writes, or removes with ``overwrite``, may be one of ``inputs`` (with or
    without ``overwrite``). Without ``overwrite`` a folder holding results of another key, or any
    file the run would write that no earlier run's ``run.json`` accounts for, is refused. With
    it the earlier run's files are removed unread (even a corrupt ``run.json`` is recovered
    from): those of this run's names, and those of the subject the earlier ``run.json`` names,
    so that no other subject's results stay beside this one's. Files of other names are kept.

    Raises
    ------
    ConfigurationError
        When an output is one of ``inputs``.
    OutputExistsError
        When the folder holds results this run would replace and ``overwrite`` is false.
    StateFileError
        When the earlier ``run.json`` is corrupt and ``overwrite`` is false.
    """
    removed = [*layout.owned_files(), *_earlier_layout(layout).owned_files()] if overwrite else []
    refuse_writing_over_inputs([*layout.written_files(), *removed], inputs)
    if overwrite:
        for path in removed:
            path.unlink(missing_ok=True)
        return False
    if layout.manifest.exists():
        manifest = read_state_file(layout.manifest)
        if manifest.get("run_key") != key:
            raise OutputExistsError(
                f"{layout.root}: holds results of a run with other inputs or settings "
                f"(run key {manifest.get('run_key')}, now {key}); pass --overwrite to replace them"
            )
        return bool(manifest.get("complete", False)) and layout.table.exists()
    existing = layout.owned_files()
    if existing:
        raise OutputExistsError(
            f"{existing[0]}: exists already and no run.json says a run of these inputs wrote "
            "it; pass --overwrite to replace it"
        )
    return False


def _earlier_layout(layout: RunLayout) -> RunLayout:
    """The layout of the subject the folder's ``run.json`` names; ``layout`` itself where there is
    none, it is unreadable, or it names no plain label."""
    if not layout.manifest.is_file():
        return layout
    try:
        label = read_state_file(layout.manifest).get("label")
    except StateFileError:
        return layout
    if not isinstance(label, str) or label in {"", ".", ".."} or Path(label).name != label:
        return layout
    return RunLayout(layout.root, label)


def remove_run(root: Path) -> None:
    """Remove the files of the explain run in ``root`` (those of the subject its ``run.json``
    names), then its folders where left empty; a folder without a readable ``run.json`` is kept
    as it is (nothing says which of its files a run wrote)."""
    layout = _earlier_layout(RunLayout(root, ""))
    if not layout.label:
        return
    for path in layout.owned_files():
        path.unlink(missing_ok=True)
    for folder in (layout.lesion_dir, root):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_text_unless_same(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` holds exactly that text already, so that a
    finished run's files are left as they are (same inode, same modification time)."""
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return
    atomic_write_text(path, text, overwrite=True)


def write_json_unless_same(path: Path, payload: object) -> None:
    """:func:`write_text_unless_same` for a JSON-ready ``payload`` (written indented)."""
    write_text_unless_same(path, json.dumps(payload, indent=2) + "\n")


def instances_lookup(
    instances: Iterable[Any], explained_ids: set[int], max_lesions: int | None
) -> pd.DataFrame:
    """The BIDS-style lookup table (``dseg.tsv``) of every id in the instances label map.

    Parameters
    ----------
    instances
        The domains of the stored label map (:class:`instasal.instances.Instance` records).
    explained_ids
        The ids that have a row in the lesion table.
    max_lesions
        The run's limit of explained domains per type, named as the reason for those left out.

    Returns
    -------
    pandas.DataFrame
        One row per id: ``index`` (the map value), ``name``, ``type``, ``volume_mm3``,
        ``n_voxels``, ``explained`` (``yes`` / ``no``) and ``reason`` when not explained.
    """
    rows = []
    for record in instances:
        explained = record.id in explained_ids
        if explained:
            reason = "n/a"
        elif max_lesions is not None:
            reason = (
                f"not among the {max_lesions} {record.kind} domains drawn with the run's seed "
                "(max_lesions)"
            )
        else:
            reason = "no saliency row (run interrupted or failed for this domain)"
        rows.append(
            {
                "index": record.id,
                "name": f"{record.kind}-{record.id}",
                "type": record.kind,
                "volume_mm3": round(record.volume_mm3, 3),
                "n_voxels": record.n_voxels,
                "explained": "yes" if explained else "no",
                "reason": reason,
            }
        )
    columns = ["index", "name", "type", "volume_mm3", "n_voxels", "explained", "reason"]
    return pd.DataFrame(rows, columns=columns)


def explained_disagrees(row: Mapping[Hashable, Any]) -> bool:
    """Whether a table row's explained forward pass decides its domain otherwise than the
    prediction did: it would not detect a predicted domain (lesion, TP, FP), or it would detect one
    the prediction did not (FN, TN). Rows without ``explained_detects`` never disagree."""
    value = row.get("explained_detects")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    detects = str(value).strip().lower() in ("true", "1", "1.0")
    return detects != (str(row.get("type")) in PREDICTED_KINDS)


def table_sidecar(channel_names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Units and definitions of every lesion-table column (a BIDS-style JSON sidecar)."""
    saliency_unit = "logit per unit of normalised input intensity"
    columns: dict[str, dict[str, str]] = {
        "id": {"Description": "Domain id; its value in the instances label map"},
        "type": {
            "Description": "lesion: predicted domain, no reference given; TP: predicted domain "
            "overlapping at least one reference voxel; FP: predicted domain overlapping no "
            "reference voxel; FN: reference lesion no predicted voxel overlaps (its domain is the "
            "reference component); TN: blob sampled in normal-appearing tissue, at least 3 mm "
            "from any predicted or reference lesion"
        },
        "region": {"Description": "Anatomical region from the reference region map, when given"},
        "volume_mm3": {"Description": "Voxel count times voxel volume", "Units": "mm^3"},
        "n_voxels": {"Description": "Number of voxels of the domain"},
        "centroid_i": {"Description": "Centroid, voxel index along axis i", "Units": "voxel"},
        "centroid_j": {"Description": "Centroid, voxel index along axis j", "Units": "voxel"},
        "centroid_k": {"Description": "Centroid, voxel index along axis k", "Units": "voxel"},
        "centroid_x": {"Description": "Centroid, world RAS x", "Units": "mm"},
        "centroid_y": {"Description": "Centroid, world RAS y", "Units": "mm"},
        "centroid_z": {"Description": "Centroid, world RAS z", "Units": "mm"},
        "prob_mean": {"Description": "Mean lesion probability inside the domain"},
        "prob_max": {"Description": "Maximum lesion probability inside the domain"},
        "explained_prob_mean": {
            "Description": "Mean lesion probability inside the domain of the forward pass the "
            "saliency maps differentiate (the run's context, named in provenance.json): equal to "
            "prob_mean up to float32 round-off in the deployed context (the prediction's own "
            "sliding window); in the patch or full context it shows how far that forward differs "
            "from the prediction"
        },
        "explained_prob_max": {
            "Description": "Maximum lesion probability inside the domain of the explained forward "
            "pass (see explained_prob_mean)"
        },
        "explained_detects": {
            "Description": "True where at least half of the domain's voxels reach the threshold "
            "in the explained forward pass. The prediction detects the lesion, TP and FP domains "
            "and not the FN and TN ones; where this column says otherwise, the maps explain a "
            "forward pass that decides the domain differently from the prediction"
        },
    }
    for name in channel_names:
        columns |= {
            f"peak_{name}": {
                "Description": f"Max of the instance SmoothGrad map of {name} (peak saliency)",
                "Units": saliency_unit,
            },
            f"peak_{name}_voxel": {"Description": f"Voxel (i,j,k) of peak_{name}"},
            f"trough_{name}": {
                "Description": f"Min of the instance SmoothGrad map of {name}",
                "Units": saliency_unit,
            },
            f"trough_{name}_voxel": {"Description": f"Voxel (i,j,k) of trough_{name}"},
            f"inside_mean_{name}": {
                "Description": f"Mean {name} saliency inside the domain",
                "Units": saliency_unit,
            },
            f"ring_mean_{name}": {
                "Description": f"Mean {name} saliency in the 1-3 mm shell around the domain",
                "Units": saliency_unit,
            },
            f"reliance_{name}": {
                "Description": f"peak_{name} / sum over channels of |peak|, in [-1, 1]",
            },
            f"density_peak_{name}": {
                "Description": f"peak_{name} divided by the voxel volume: resolution-independent "
                "(compare across voxel sizes and scanners)",
                "Units": f"{saliency_unit} per mm^3",
            },
            f"density_inside_mean_{name}": {
                "Description": f"inside_mean_{name} divided by the voxel volume",
                "Units": f"{saliency_unit} per mm^3",
            },
        }
    columns |= {
        "gradcam_peak": {
            "Description": "Max of the raw instance Grad-CAM++ map (arbitrary units); computed "
            "in the run's context, in the deployed context on the patch window centred on the "
            "domain (provenance.json resolved.gradcam_context)"
        },
        "gradcam_peak_voxel": {"Description": "Voxel (i,j,k) of gradcam_peak"},
    }
    return columns
