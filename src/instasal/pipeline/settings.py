"""Settings of an explain run, validated at construction, and the run key used for resuming."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instasal.errors import ConfigurationError
from instasal.saliency.config import GradCamConfig, SmoothGradConfig
from instasal.typing import Connectivity, Context, SaliencyOf, check_choice

__all__ = ["DEFAULT_BUDGET_S", "DEMO_SETTINGS", "ExplainSettings", "file_sha256", "run_key"]

PAPER_N_SAMPLES = 50
"""The paper's SmoothGrad noise draws per domain."""

DEFAULT_BUDGET_S = 3600.0
"""The longest saliency stage a run starts without being told to (seconds; see
:mod:`instasal.pipeline.cost`)."""


@dataclass(frozen=True)
class ExplainSettings:
    """What :func:`instasal.pipeline.explain_subject` computes, and how.

    Parameters
    ----------
    smoothgrad
        Instance SmoothGrad (SPEC §2; paper: N = 50, 5 %, max aggregation): N, noise, aggregation,
        engine and seed, which also seeds TN sampling.
    gradcam
        Instance Grad-CAM++ (SPEC §3) with its variant and layer (``layer=None``: the model card's
        default layer); ``None``: no Grad-CAM. The forward pass both explain (target class,
        context, patch) is resolved by the run from ``context`` and the model card.
    context
        ``"deployed"``, ``"patch"`` or ``"full"``; ``None`` picks the prediction's own forward:
        ``"deployed"`` (the sliding window over the card's patch), or ``"full"`` when the card
        gives no patch size; ``"patch"`` with a note where the deployed forward is not reproduced
        (see :func:`instasal.pipeline.context_choice.resolve_context`).
    threshold
        Lesion probability threshold; ``None`` takes the model card's.
    connectivity, min_volume_mm3
        Instance definition (SPEC §1).
    n_true_negatives
        TN domains sampled when a reference is given.
    max_lesions
        Explain at most ``max_lesions`` domains of each type, drawn at random with the
        SmoothGrad seed (:func:`instasal.pipeline.per_lesion.sample_domains`; ``None``: all).
    tta
        nnU-Net v2 folders: segment with nnU-Net's mirroring test-time augmentation
        (``nnUNetv2_predict``'s default); ``False`` as its ``--disable_tta``.
    saliency_of
        ``"network"``: saliency of the plain network's logit (as the authors did); ``"tta"``
        (nnU-Net folders): of the mirrored-average logit nnU-Net thresholds, one forward and
        backward per mirror (no Grad-CAM: its layer runs once per mirror).
    trust
        Also run the trust checks of ``docs/trust.md`` per explained domain (model randomisation,
        deletion and insertion, radial profile): extra table columns and a profile TSV.
    report_panels
        At most this many per-domain panels (figure, facts, viewer volumes) in the HTML report,
        the largest domains first; every domain stays in the table and keeps its maps, and the
        report says how many panels it left out. Not part of the run key: it changes the report
        only.

    Examples
    --------
    >>> from instasal.saliency import GradCamConfig, SmoothGradConfig
    >>> settings = ExplainSettings(SmoothGradConfig(n_samples=8), GradCamConfig(variant="gradcam"))
    >>> settings.smoothgrad.n_samples, settings.as_dict()["gradcam_variant"]
    (8, 'gradcam')
    """

    smoothgrad: SmoothGradConfig = field(default_factory=SmoothGradConfig)
    gradcam: GradCamConfig | None = field(default_factory=GradCamConfig)
    context: Context | None = None
    threshold: float | None = None
    connectivity: Connectivity = 18
    min_volume_mm3: float = 5.0
    n_true_negatives: int = 10
    max_lesions: int | None = None
    tta: bool = True
    saliency_of: SaliencyOf = "network"
    trust: bool = False
    report_panels: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.smoothgrad, SmoothGradConfig):
            raise ConfigurationError(
                f"smoothgrad must be a SmoothGradConfig, got {self.smoothgrad!r}"
            )
        if self.gradcam is not None and not isinstance(self.gradcam, GradCamConfig):
            raise ConfigurationError(
                f"gradcam must be a GradCamConfig or None, got {self.gradcam!r}"
            )
        if self.context is not None:
            check_choice("context", self.context, Context)
        check_choice("connectivity", self.connectivity, Connectivity)
        check_choice("saliency_of", self.saliency_of, SaliencyOf)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigurationError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.n_true_negatives < 0:
            raise ConfigurationError(f"n_true_negatives must be >= 0, got {self.n_true_negatives}")
        if isinstance(self.report_panels, bool) or not isinstance(self.report_panels, int):
            raise ConfigurationError(
                f"report_panels must be a whole number >= 0, got {self.report_panels!r}"
            )
        if self.report_panels < 0:
            raise ConfigurationError(f"report_panels must be >= 0, got {self.report_panels}")
        if self.max_lesions is not None and self.max_lesions < 1:
            raise ConfigurationError(f"max_lesions must be >= 1, got {self.max_lesions}")
        if self.saliency_of == "tta" and self.gradcam is not None:
            raise ConfigurationError(
                "saliency_of='tta' explains a mirrored average, where the Grad-CAM layer runs "
                "once per mirror; turn Grad-CAM off (gradcam=None / --no-gradcam)"
            )

    @property
    def reductions(self) -> tuple[str, ...]:
        """Each way these settings fall below the paper's, in words (empty: none): fewer noise
        draws than its N = 50, the labelled max-aggregation approximation, or a sample of the
        domains instead of every one. The report, the provenance and ``cohort.json`` flag such a
        run."""
        below = []
        if self.smoothgrad.n_samples < PAPER_N_SAMPLES:
            below.append(f"N = {self.smoothgrad.n_samples} noise draws (paper: {PAPER_N_SAMPLES})")
        if self.smoothgrad.approximate:
            below.append(
                f"approximate max aggregation over every {self.smoothgrad.max_stride}th voxel "
                "of each domain along each axis (paper: every voxel)"
            )
        if self.max_lesions is not None:
            below.append(
                f"at most {self.max_lesions} domain(s) of each type, drawn at random "
                "(paper: every lesion)"
            )
        return tuple(below)

    @property
    def reduced(self) -> bool:
        """Whether the settings fall below the paper's (:attr:`reductions`)."""
        return bool(self.reductions)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a flat JSON-ready dict (``run.json``; the run key is its hash).

        Flat and with the same keys whatever the nesting above, so that a folder written by an
        earlier release has the same run key and resumes.
        """
        smoothgrad, gradcam = self.smoothgrad, self.gradcam
        return {
            "n_samples": smoothgrad.n_samples,
            "noise_level": smoothgrad.noise_level,
            "noise_range": smoothgrad.noise_range,
            "aggregation": smoothgrad.aggregation,
            "context": self.context,
            "engine": smoothgrad.engine,
            "threshold": self.threshold,
            "connectivity": self.connectivity,
            "min_volume_mm3": self.min_volume_mm3,
            "n_true_negatives": self.n_true_negatives,
            "gradcam": gradcam is not None,
            "gradcam_variant": gradcam.variant if gradcam else GradCamConfig().variant,
            "gradcam_layer": gradcam.layer if gradcam else None,
            "seed": smoothgrad.seed,
            "max_lesions": self.max_lesions,
            "reduced": self.reduced,
            "tta": self.tta,
            "saliency_of": self.saliency_of,
            "trust": self.trust,
        } | ({"max_stride": smoothgrad.max_stride} if smoothgrad.approximate else {})


DEMO_SETTINGS = ExplainSettings(SmoothGradConfig(n_samples=2), n_true_negatives=2, max_lesions=3)
"""Reduced settings for ``instasal demo`` (within minutes on 2 CPU cores in the deployed context,
whose rows cost the backward pass of every prediction window holding the voxel)."""


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def run_key(payload: dict[str, Any]) -> str:
    """A short stable hash of everything that determines a run's results."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
