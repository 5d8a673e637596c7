"""What each experiment produced, as typed records, and the one step that writes them.

``run_*_experiment`` computes and returns one of these results; its figure is drawn from it by
:mod:`instasal.experiments.figures`; :func:`write_experiment` writes its tables
(``<out>/<name>.tsv``), figure and summary JSON, atomically. ``summary()`` is the JSON written,
key for key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, get_args

import pandas as pd

from instasal.errors import ConfigurationError, OutputExistsError
from instasal.experiments.perilesional import PLATEAU_FRACTION
from instasal.experiments.subjects import context_record
from instasal.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from instasal.report.subject_figures import figure_png
from instasal.typing import Condition, Context, PathLike, UncertaintyMethod, UncertaintySignal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RELOCATION_CONDITIONS",
    "ContextResult",
    "ExperimentResult",
    "OutputFiles",
    "PatchFullResult",
    "RelocationResult",
    "UncertaintyResult",
    "context_fields",
    "explained_domains",
    "nan_to_none",
    "refuse_existing",
    "write_experiment",
]

RELOCATION_CONDITIONS: tuple[Condition, ...] = get_args(Condition)
"""The relocation conditions, in the order of the table and figure."""


@dataclass(frozen=True)
class OutputFiles:
    """The file names one experiment writes in its folder, without their suffixes."""

    tables: tuple[str, ...]
    """Each ``.tsv``, in the order of the result's ``tables()``."""
    summary: str
    figure: str | None = None

    def paths(self, out: Path) -> tuple[Path, ...]:
        """Every file written under ``out``."""
        names = [f"{name}.tsv" for name in self.tables]
        if self.figure is not None:
            names.append(f"{self.figure}.png")
        return (*(out / name for name in names), out / f"{self.summary}.json")


class ExperimentResult(Protocol):
    """What :func:`write_experiment` reads of a result."""

    outputs: ClassVar[OutputFiles]

    def tables(self) -> tuple[pd.DataFrame, ...]: ...

    def summary(self) -> dict[str, Any]: ...


def nan_to_none(value: Any) -> float | None:
    """A float for JSON, ``None`` for a missing value."""
    return None if pd.isna(value) else float(value)


@dataclass(frozen=True, eq=False)
class ContextResult:
    """Perilesional context (:func:`instasal.experiments.runner.run_context_experiment`)."""

    outputs: ClassVar[OutputFiles] = OutputFiles(
        ("context_records", "context_curve"), "context_summary", "context_curve"
    )
    records: pd.DataFrame
    """One row per lesion and distance (:func:`instasal.experiments.context_curve`)."""
    curve: pd.DataFrame
    """One row per distance: mean and sd of the probability, detection rate, lesions."""
    volume_band_mm3: tuple[float, float]
    plateau_mm: float | None
    context: str
    context_notes: tuple[str, ...]

    @property
    def n_lesions(self) -> int:
        return int(self.curve["n_lesions"].max())

    def tables(self) -> tuple[pd.DataFrame, ...]:
        return self.records, self.curve

    def summary(self) -> dict[str, Any]:
        return {
            "n_lesions": self.n_lesions,
            "volume_band_mm3": list(self.volume_band_mm3),
            "plateau_mm": self.plateau_mm,
            "plateau_rule": "smallest distance from which the mean stays >= "
            f"{PLATEAU_FRACTION:.0%} of its value at the largest distance",
            "probability_alone": float(self.curve["mean_probability"].iloc[0]),
            "probability_at_max": float(self.curve["mean_probability"].iloc[-1]),
            "context": self.context,
            "context_notes": list(self.context_notes),
        }


@dataclass(frozen=True, eq=False)
class RelocationResult:
    """Lesions relocated (:func:`instasal.experiments.runner.run_relocation_experiment`)."""

    outputs: ClassVar[OutputFiles] = OutputFiles(
        ("relocation",), "relocation_summary", "relocation"
    )
    table: pd.DataFrame
    """One row per lesion and condition (:data:`RELOCATION_CONDITIONS`)."""
    shell_mm: float
    context: str
    context_notes: tuple[str, ...]

    @property
    def n_lesions(self) -> int:
        return int(self.table.groupby(["subject", "lesion_id"]).ngroups)

    def detection_rate(self) -> dict[str, float | None]:
        """Each condition's detection rate over the lesions placed (``None``: none placed)."""
        placed = self.table[self.table["placed"]]
        rates = placed.groupby("condition")["detected"].mean()
        return {c: nan_to_none(rates.get(c)) for c in RELOCATION_CONDITIONS}

    def n_placed(self) -> dict[str, int]:
        """Each condition's lesions placed."""
        counts = self.table[self.table["placed"]].groupby("condition").size()
        return {c: int(counts.get(c, 0)) for c in RELOCATION_CONDITIONS}

    def tables(self) -> tuple[pd.DataFrame, ...]:
        return (self.table,)

    def summary(self) -> dict[str, Any]:
        return {
            "n_lesions": self.n_lesions,
            "detection_rate": self.detection_rate(),
            "n_placed": self.n_placed(),
            "shell_mm": self.shell_mm,
            "context": self.context,
            "context_notes": list(self.context_notes),
        }


@dataclass(frozen=True, eq=False)
class PatchFullResult:
    """A context's maps against full context's
    (:func:`instasal.experiments.runner.run_patch_full_experiment`); no figure."""

    outputs: ClassVar[OutputFiles] = OutputFiles(("patch_vs_full",), "patch_vs_full_summary")
    table: pd.DataFrame
    """One row per lesion: :func:`instasal.saliency.context_agreement`'s columns."""
    context: str
    context_notes: tuple[str, ...]

    def tables(self) -> tuple[pd.DataFrame, ...]:
        return (self.table,)

    def summary(self) -> dict[str, Any]:
        numeric = self.table.select_dtypes("number").drop(columns=["lesion_id"])
        return {
            "n_lesions": len(self.table),
            "compared_with": "full",
            "context": self.context,
            "context_notes": list(self.context_notes),
            "median": {k: float(v) for k, v in numeric.median().items()},
            "min": {k: float(v) for k, v in numeric.min().items()},
            "max": {k: float(v) for k, v in numeric.max().items()},
        }


@dataclass(frozen=True, eq=False)
class UncertaintyResult:
    """Missed lesions from uncertainty
    (:func:`instasal.experiments.uncertainty_sweep.run_uncertainty_experiment`)."""

    outputs: ClassVar[OutputFiles] = OutputFiles(
        ("uncertainty_candidates", "uncertainty_curve"), "uncertainty_summary", "uncertainty"
    )
    candidates: pd.DataFrame
    """One row per candidate and level; saliency columns on the explained sample."""
    curve: pd.DataFrame
    """One row per level: FNs found, false alarms, ROC AUCs."""
    method: UncertaintyMethod
    signal: UncertaintySignal
    levels: tuple[float, ...]
    threshold: float
    """The model's threshold: the prediction the candidates keep away from."""
    n_passes: int
    n_subjects: int
    n_reference_lesions: int
    n_FN: int
    context: str
    context_notes: tuple[str, ...]
    n_samples: int
    max_explained: int
    peak: str
    """The saliency column whose ROC AUC is reported (``peak_<first channel>``)."""
    n_found_FN_domains: int
    n_false_alarm_domains: int
    auc_peak: float
    auc_max_probability: float
    seconds: dict[str, float]
    """Time spent on uncertainty, on saliency, and in all."""
    seed: int

    def tables(self) -> tuple[pd.DataFrame, ...]:
        return self.candidates, self.curve

    def summary(self) -> dict[str, Any]:
        curve = self.curve.astype(object).where(self.curve.notna(), None)
        return {
            "method": self.method,
            "signal": self.signal,
            "n_passes": self.n_passes,
            "levels": list(self.levels),
            "candidate_rule": f"18-connected components of voxels whose {self.signal} over the "
            "passes is >= level and that neither overlap nor touch a predicted lesion "
            f"(plain probability >= {self.threshold}), volume > 5 mm³",
            "n_subjects": self.n_subjects,
            "n_reference_lesions": self.n_reference_lesions,
            "n_FN": self.n_FN,
            "per_level": curve.to_dict(orient="records"),
            "explained": {
                "context": self.context,
                "context_notes": list(self.context_notes),
                "n_samples": self.n_samples,
                "max_per_subject_level_kind": self.max_explained,
                "n_found_FN_domains": self.n_found_FN_domains,
                "n_false_alarm_domains": self.n_false_alarm_domains,
                f"auc_{self.peak}": nan_to_none(self.auc_peak),
                "auc_max_probability": nan_to_none(self.auc_max_probability),
            },
            "seconds": self.seconds,
            "seed": self.seed,
        }


def explained_domains(candidates: pd.DataFrame, peak: str) -> pd.DataFrame:
    """One row per explained domain of the uncertainty candidates (its first level's row): those
    with a ``peak`` saliency value."""
    domains = candidates.drop_duplicates(["subject", "domain"])
    return domains[domains[peak].notna()]


def context_fields(seen: Sequence[tuple[Context, str | None]]) -> dict[str, Any]:
    """The ``context`` and ``context_notes`` fields of a result, from each subject's
    ``(context, context_note)`` (:func:`instasal.experiments.subjects.context_record`)."""
    record = context_record(seen)
    return {"context": record["context"], "context_notes": tuple(record["context_notes"])}


def refuse_existing(outputs: OutputFiles, out: PathLike, overwrite: bool) -> None:
    """Refuse a folder holding any of an experiment's files, unless ``overwrite``: checked
    before any work, so that nothing is computed in vain and no folder is left half written.

    Raises
    ------
    OutputExistsError
        Naming the first file found.
    """
    if overwrite:
        return
    for path in outputs.paths(Path(out)):
        if path.exists():
            raise OutputExistsError(f"{path}: exists already (pass overwrite=True)")


def write_experiment(
    result: ExperimentResult,
    out: PathLike,
    figure: Figure | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, ...]:
    """Write ``result``'s tables, ``figure`` (when given; closed once written) and summary
    under ``out``, atomically, refused where one exists unless ``overwrite``.

    Parameters
    ----------
    result
        What a ``run_*_experiment`` returned.
    out
        Output folder, created if missing; the names are ``result.outputs``'.
    figure
        The result's figure (:mod:`instasal.experiments.figures`); ``None``: no PNG.

    Returns
    -------
    tuple of Path
        The files written, in order.

    Raises
    ------
    ConfigurationError
        On a figure for a result that has none (patch against full).
    OutputExistsError
        Before anything is written, where one of the files exists.
    """
    out = Path(out)
    names = result.outputs
    if figure is not None and names.figure is None:
        raise ConfigurationError(f"{type(result).__name__} has no figure; pass figure=None")
    refuse_existing(names, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in zip(names.tables, result.tables(), strict=True):
        written.append(out / f"{name}.tsv")
        atomic_write_text(written[-1], table.to_csv(sep="\t", index=False), overwrite=overwrite)
    if figure is not None:
        written.append(out / f"{names.figure}.png")
        atomic_write_bytes(written[-1], figure_png(figure, dpi=110), overwrite=overwrite)
    written.append(out / f"{names.summary}.json")
    atomic_write_json(written[-1], result.summary(), overwrite=overwrite)
    return tuple(written)
