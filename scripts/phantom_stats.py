"""Print statistics of a phantom cohort: lesions, volumes, regions, contrasts, mimics, timing.

Subjects are generated in memory exactly as ``write_cohort`` would (same per-subject seeds). With
``--generator v2`` it prints the realism table instead: every measure of docs/phantoms.md §v2
against its target (``--contrast swapped`` and ``--head`` for the other arms).

Usage::

    .venv/bin/python scripts/phantom_stats.py --subjects 40 --seed 0 --resolution 2 --timing 2
    .venv/bin/python scripts/phantom_stats.py --generator v2 --subjects 30 --timing 2
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from instasal.dataset import REGION_LABELS
from instasal.phantoms import PhantomSubject, make_phantom
from instasal.phantoms.anatomy import load_template_anatomy
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.bids_writer import subject_seeds
from instasal.phantoms.realism import components, local_contrast

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _quantiles(values: list[float] | np.ndarray, digits: int = 1) -> str:
    if len(values) == 0:
        return "(none)"
    numbers = np.quantile(np.asarray(values, dtype=float), QUANTILES)
    return "  ".join(
        f"q{int(q * 100):02d}={value:.{digits}f}"
        for q, value in zip(QUANTILES, numbers, strict=True)
    )


def _components(
    mask: np.ndarray, voxel_mm3: float, min_mm3: float = 5.0
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The components of more than ``min_mm3`` (strictly: the size rule of
    :func:`instasal.instances.lesion_components`), as :func:`components` finds them."""
    return [(box, c) for box, c in components(mask, voxel_mm3) if c.sum() * voxel_mm3 > min_mm3]


BASELINE_THRESHOLDS = (1.3, 1.45, 1.6)


def _threshold_baseline(subject: PhantomSubject, normal: np.ndarray) -> dict[str, list[float]]:
    """Lesion-wise TP/FP/FN counts of thresholding FLAIR at multiples of white matter.

    A difficulty gauge: what a model that only knew "bright on FLAIR" would reach.
    """
    flair = subject.flair / float(np.median(subject.flair[normal]))
    voxel_mm3 = float(subject.resolution) ** 3
    truth = _components(subject.lesion_mask, voxel_mm3)
    rows: dict[str, list[float]] = {}
    for threshold in BASELINE_THRESHOLDS:
        predicted = (flair >= threshold) & subject.brain_mask
        found = _components(predicted, voxel_mm3)
        true_positive = sum(bool(subject.lesion_mask[box][c].any()) for box, c in found)
        detected = sum(bool(predicted[box][c].any()) for box, c in truth)
        rows[f"tp_{threshold}"] = [float(true_positive)]
        rows[f"fp_{threshold}"] = [float(len(found) - true_positive)]
        rows[f"detected_{threshold}"] = [float(detected)]
        rows[f"truth_{threshold}"] = [float(len(truth))]
    return rows


def _subject_rows(subject: PhantomSubject) -> dict[str, list[float]]:
    voxel_mm3 = float(subject.resolution) ** 3
    normal = subject.wm_mask & ~subject.lesion_mask & ~subject.mimic_mask
    shell = 2 if subject.resolution == 2 else 4
    components = _components(subject.lesion_mask, voxel_mm3)
    mimics = _components(subject.mimic_mask, voxel_mm3, min_mm3=0.0)
    rows: dict[str, list[float]] = {
        "component_volume": [float(c.sum()) * voxel_mm3 for _, c in components],
        "n_components": [float(len(components))],
        "n_mimics": [float(len(mimics))],
        "mimic_volume": [float(subject.mimic_mask.sum()) * voxel_mm3],
    }
    rows.update(_threshold_baseline(subject, normal))
    for name, image in (("flair", subject.flair), ("t1w", subject.t1w)):
        for kind, found in (("component", components), ("mimic", mimics)):
            values = [local_contrast(image, normal, box, c, shell) for box, c in found]
            rows[f"{kind}_{name}"] = [value for value in values if value is not None]
    return rows


def cohort_statistics(n_subjects: int, seed: int, resolution: int) -> None:
    """Generate the cohort in memory and print its statistics."""
    load_template_anatomy(resolution)
    seeds = subject_seeds(seed, n_subjects)
    counts: list[int] = []
    volumes: list[float] = []
    regions: Counter[str] = Counter()
    faint = 0
    drawn_flair: list[float] = []
    drawn_t1w: list[float] = []
    rows: dict[str, list[float]] = {}
    seconds: list[float] = []
    for subject_seed in seeds:
        start = time.perf_counter()
        subject = make_phantom(subject_seed, resolution=resolution)  # type: ignore[arg-type]
        seconds.append(time.perf_counter() - start)
        counts.append(len(subject.lesions))
        for lesion in subject.lesions:
            volumes.append(lesion.volume_mm3)
            regions[lesion.region] += 1
            faint += lesion.faint
            drawn_flair.append(lesion.flair_contrast)
            drawn_t1w.append(lesion.t1w_contrast)
        for key, values in _subject_rows(subject).items():
            rows.setdefault(key, []).extend(values)
    total = max(sum(counts), 1)
    print(f"cohort: {n_subjects} subjects, seed {seed}, {resolution} mm")
    print(f"lesions per subject: {counts}")
    print(
        f"  mean {np.mean(counts):.1f}, sd {np.std(counts):.1f}, min {min(counts)}, "
        f"max {max(counts)}, subjects without lesions {sum(c == 0 for c in counts)}"
    )
    print(
        f"  connected components > 5 mm³ (18-conn.) per subject: {_quantiles(rows['n_components'])}"
    )
    print(f"lesion volume mm³ (own mask, {len(volumes)} lesions): {_quantiles(volumes)}")
    print(
        f"  min {min(volumes, default=0):.1f}, max {max(volumes, default=0):.1f}, "
        f"share < 20 mm³ {np.mean(np.asarray(volumes) < 20):.2f}, "
        f"share > 1000 mm³ {np.mean(np.asarray(volumes) > 1000):.3f}"
    )
    print(f"component volume mm³: {_quantiles(rows['component_volume'])}")
    print(
        "region shares: "
        + ", ".join(f"{name} {regions[name] / total:.2f}" for name in REGION_LABELS)
    )
    print(f"faint share: {faint / total:.2f}")
    print(f"drawn peak FLAIR contrast: {_quantiles(drawn_flair, 2)}")
    print(f"drawn peak T1w contrast:   {_quantiles(drawn_t1w, 2)}")
    print("measured contrast: mean over a component / median normal WM in a 2-4 mm shell, - 1")
    print(f"  lesion FLAIR {_quantiles(rows['component_flair'], 2)}")
    print(f"  lesion T1w   {_quantiles(rows['component_t1w'], 2)}")
    print(
        f"  share of lesions with FLAIR contrast < 0.1: "
        f"{np.mean(np.asarray(rows['component_flair']) < 0.1):.2f}"
    )
    print(f"  mimic FLAIR  {_quantiles(rows['mimic_flair'], 2)}")
    print(f"  mimic T1w    {_quantiles(rows['mimic_t1w'], 2)}")
    print(
        f"mimics per subject (components): {_quantiles(rows['n_mimics'])}, "
        f"volume mm³ {_quantiles(rows['mimic_volume'], 0)}"
    )
    print("naive baseline, FLAIR >= k x median white matter, lesion-wise (components > 5 mm³):")
    for threshold in BASELINE_THRESHOLDS:
        tp, fp = sum(rows[f"tp_{threshold}"]), sum(rows[f"fp_{threshold}"])
        recall = sum(rows[f"detected_{threshold}"]) / max(sum(rows[f"truth_{threshold}"]), 1.0)
        print(f"  k={threshold}: TPR {recall:.2f}, FDR {fp / max(tp + fp, 1.0):.2f}")
    print(f"seconds per subject at {resolution} mm (template cached): {_quantiles(seconds, 2)}")


def timing(resolution: int, n_subjects: int, generator: str = "v1") -> None:
    """Print the first-call (template loading) and per-subject generation time."""
    load_template_anatomy.cache_clear()
    start = time.perf_counter()
    load_template_anatomy(resolution)
    loading = time.perf_counter() - start
    seconds = []
    for seed in range(n_subjects):
        start = time.perf_counter()
        make_phantom(1000 + seed, resolution=resolution, generator=generator)  # type: ignore[arg-type]
        seconds.append(time.perf_counter() - start)
    print(
        f"timing {generator} {resolution} mm: template load (once per process) {loading:.1f} s, "
        f"per subject {np.mean(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}, "
        f"n={n_subjects})"
    )


def main() -> None:
    """Parse arguments, print statistics and timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=2)
    parser.add_argument("--timing", type=int, default=2, help="subjects timed per resolution")
    parser.add_argument("--generator", choices=("v1", "v2"), default="v1")
    parser.add_argument("--contrast", choices=("standard", "swapped"), default="standard")
    parser.add_argument("--head", action="store_true", help="v2: the non-skull-stripped arm")
    arguments = parser.parse_args()
    if arguments.generator == "v2":
        from phantom_realism_table import realism_table

        arm = PhantomArm(contrast=arguments.contrast, skull_stripped=not arguments.head)
        realism_table(arguments.subjects, arguments.seed, arguments.resolution, arm)
    else:
        cohort_statistics(arguments.subjects, arguments.seed, arguments.resolution)
    if arguments.timing > 0:
        for resolution in (2, 1):
            timing(resolution, arguments.timing, arguments.generator)


if __name__ == "__main__":
    main()
