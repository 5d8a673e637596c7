"""Print statistics of a phantom cohort: lesions, volumes, regions, contrasts, mimics, timing.

Subjects are generated in memory exactly as ``write_cohort`` would (same per-subject seeds).

Usage::

    .venv/bin/python scripts/phantom_stats.py --subjects 40 --seed 0 --resolution 2 --timing 2
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from scipy import ndimage

from instasal.phantoms import PhantomSubject, make_phantom
from instasal.phantoms.anatomy import load_template_anatomy
from instasal.phantoms.cohort import subject_seeds

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)


def _quantiles(values: list[float] | np.ndarray, digits: int = 1) -> str:
    if len(values) == 0:
        return "(none)"
    numbers = np.quantile(np.asarray(values, dtype=float), QUANTILES)
    return "  ".join(
        f"q{int(q * 100):02d}={value:.{digits}f}"
        for q, value in zip(QUANTILES, numbers, strict=True)
    )


def _components(mask: np.ndarray, voxel_mm3: float, min_mm3: float = 5.0) -> list[np.ndarray]:
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_18)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return [labels == index for index in range(1, count + 1) if sizes[index] * voxel_mm3 > min_mm3]


def _subject_rows(subject: PhantomSubject) -> dict[str, list[float]]:
    voxel_mm3 = float(subject.resolution) ** 3
    normal = subject.wm_mask & ~subject.lesion_mask & ~subject.mimic_mask
    white_flair = float(np.median(subject.flair[normal]))
    white_t1w = float(np.median(subject.t1w[normal]))
    components = _components(subject.lesion_mask, voxel_mm3)
    mimics = _components(subject.mimic_mask, voxel_mm3, min_mm3=0.0)
    return {
        "component_flair": [float(subject.flair[c].mean()) / white_flair - 1 for c in components],
        "component_t1w": [float(subject.t1w[c].mean()) / white_t1w - 1 for c in components],
        "component_volume": [float(c.sum()) * voxel_mm3 for c in components],
        "n_components": [float(len(components))],
        "n_mimics": [float(len(mimics))],
        "mimic_volume": [float(subject.mimic_mask.sum()) * voxel_mm3],
        "mimic_flair": [float(subject.flair[subject.mimic_mask].mean()) / white_flair - 1]
        if subject.mimic_mask.any()
        else [],
    }


def cohort_statistics(n_subjects: int, seed: int, resolution: int) -> None:
    """Generate the cohort in memory and print its statistics."""
    load_template_anatomy(resolution)  # type: ignore[arg-type]
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
        + ", ".join(
            f"{name} {regions[name] / total:.2f}"
            for name in ("periventricular", "juxtacortical", "deep", "infratentorial")
        )
    )
    print(f"faint share: {faint / total:.2f}")
    print(f"drawn peak FLAIR contrast: {_quantiles(drawn_flair, 2)}")
    print(f"drawn peak T1w contrast:   {_quantiles(drawn_t1w, 2)}")
    print("measured lesion-to-WM contrast (mean over a component / median normal WM − 1):")
    print(f"  FLAIR {_quantiles(rows['component_flair'], 2)}")
    print(f"  T1w   {_quantiles(rows['component_t1w'], 2)}")
    print(
        f"mimics per subject (components): {_quantiles(rows['n_mimics'])}, "
        f"volume mm³ {_quantiles(rows['mimic_volume'], 0)}"
    )
    print(f"  mimic FLAIR contrast (mean over mask): {_quantiles(rows['mimic_flair'], 2)}")
    print(f"seconds per subject at {resolution} mm (template cached): {_quantiles(seconds, 2)}")


def timing(resolution: int, n_subjects: int) -> None:
    """Print the first-call (template loading) and per-subject generation time."""
    load_template_anatomy.cache_clear()
    start = time.perf_counter()
    load_template_anatomy(resolution)  # type: ignore[arg-type]
    loading = time.perf_counter() - start
    seconds = []
    for seed in range(n_subjects):
        start = time.perf_counter()
        make_phantom(1000 + seed, resolution=resolution)  # type: ignore[arg-type]
        seconds.append(time.perf_counter() - start)
    print(
        f"timing {resolution} mm: template load (once per process) {loading:.1f} s, "
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
    arguments = parser.parse_args()
    cohort_statistics(arguments.subjects, arguments.seed, arguments.resolution)
    if arguments.timing > 0:
        for resolution in (2, 1):
            timing(resolution, arguments.timing)


if __name__ == "__main__":
    main()
