"""Settings of an explain run, validated at construction, and the run key used for resuming."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from instasal.errors import ConfigurationError
from instasal.typing import Aggregation, Connectivity, Context, EngineName, NoiseRange

__all__ = ["DEMO_SETTINGS", "ExplainSettings", "file_sha256", "run_key"]

GradcamVariant = Literal["gradcam++", "gradcam"]
SaliencyOf = Literal["network", "tta"]


@dataclass(frozen=True)
class ExplainSettings:
    """What :func:`instasal.pipeline.explain_subject` computes, and how.

    Parameters
    ----------
    n_samples, noise_level, noise_range, aggregation, engine
        Instance SmoothGrad (SPEC §2; paper: N = 50, 5 %, max aggregation).
    context
        ``"patch"`` or ``"full"``; ``None`` picks ``"patch"`` when the model card gives a training
        patch size (the paper's geometry), else ``"full"``.
    threshold
        Lesion probability threshold; ``None`` takes the model card's.
    connectivity, min_volume_mm3
        Instance definition (SPEC §1).
    n_true_negatives
        TN domains sampled when a reference is given.
    gradcam, gradcam_variant, gradcam_layer
        Instance Grad-CAM++ (SPEC §3); ``gradcam_layer=None`` takes the card's default layer.
    seed
        Seeds the noise draws and TN sampling.
    max_lesions
        Explain only the first ``max_lesions`` domains of each type (``None``: all).
    reduced
        Marks settings reduced below the paper's for speed (the report says so).
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
    """

    n_samples: int = 50
    noise_level: float = 0.05
    noise_range: NoiseRange = "per_channel"
    aggregation: Aggregation = "max"
    context: Context | None = None
    engine: EngineName = "auto"
    threshold: float | None = None
    connectivity: Connectivity = 18
    min_volume_mm3: float = 5.0
    n_true_negatives: int = 10
    gradcam: bool = True
    gradcam_variant: GradcamVariant = "gradcam++"
    gradcam_layer: str | None = None
    seed: int = 0
    max_lesions: int | None = None
    reduced: bool = False
    tta: bool = True
    saliency_of: SaliencyOf = "network"
    trust: bool = False

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ConfigurationError(f"n_samples must be >= 1, got {self.n_samples}")
        if not 0.0 <= self.noise_level < 1.0:
            raise ConfigurationError(f"noise_level must be in [0, 1), got {self.noise_level}")
        if self.noise_range not in ("per_channel", "first_channel"):
            raise ConfigurationError(
                f"noise_range must be 'per_channel' or 'first_channel', got {self.noise_range!r}"
            )
        if self.aggregation not in ("max", "mean"):
            raise ConfigurationError(
                f"aggregation must be 'max' or 'mean', got {self.aggregation!r}"
            )
        if self.engine not in ("naive", "batched", "auto"):
            raise ConfigurationError(
                f"engine must be 'naive', 'batched' or 'auto', got {self.engine!r}"
            )
        if self.context not in (None, "full", "patch"):
            raise ConfigurationError(f"context must be 'full' or 'patch', got {self.context!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigurationError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.connectivity not in (6, 18, 26):
            raise ConfigurationError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        if self.n_true_negatives < 0:
            raise ConfigurationError(f"n_true_negatives must be >= 0, got {self.n_true_negatives}")
        if self.max_lesions is not None and self.max_lesions < 1:
            raise ConfigurationError(f"max_lesions must be >= 1, got {self.max_lesions}")
        if self.saliency_of not in ("network", "tta"):
            raise ConfigurationError(
                f"saliency_of must be 'network' or 'tta', got {self.saliency_of!r}"
            )
        if self.saliency_of == "tta" and self.gradcam:
            raise ConfigurationError(
                "saliency_of='tta' explains a mirrored average, where the Grad-CAM layer runs "
                "once per mirror; turn Grad-CAM off (gradcam=False / --no-gradcam)"
            )
        if self.gradcam_variant not in ("gradcam++", "gradcam"):
            raise ConfigurationError(
                f"gradcam_variant must be 'gradcam++' or 'gradcam', got {self.gradcam_variant!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)


DEMO_SETTINGS = ExplainSettings(
    n_samples=4, n_true_negatives=4, max_lesions=6, reduced=True, engine="auto"
)
"""Reduced settings for ``instasal demo`` (within minutes on 2 CPU cores)."""


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
