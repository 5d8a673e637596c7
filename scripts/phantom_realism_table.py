"""The v2 realism table (docs/phantoms.md §v2): a cohort measured against the specification.

Run through ``scripts/phantom_stats.py --generator v2``; prints a Markdown table (measured,
target, whether the measure is within it) that docs/phantoms.md quotes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from instasal.dataset import REGION_LABELS
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.bids_writer import subject_seeds
from instasal.phantoms.realism import REALISM_TARGETS, lesion_contrasts, subject_measures
from instasal.phantoms.subject_v2 import generate_v2

REGIONS: tuple[str, ...] = tuple(REGION_LABELS)


def _spread(values: list[float], digits: int = 2) -> str:
    array = np.asarray(values, dtype=float)
    q05, median, q95 = np.quantile(array, [0.05, 0.5, 0.95])
    return f"{median:.{digits}f} [{q05:.{digits}f}–{q95:.{digits}f}]"


def _row(name: str, measured: str, target: str, ok: bool | np.bool_) -> str:
    return f"| {name} | {measured} | {target} | {'yes' if bool(ok) else '**no**'} |"


def _cohort(
    n_subjects: int, seed: int, resolution: int, arm: PhantomArm
) -> tuple[list[dict[str, float]], dict[str, list[float]], Counter[str], list[dict]]:
    per_subject: list[dict[str, float]] = []
    lesions: dict[str, list[float]] = {"flair": [], "t1w": [], "volume": []}
    regions: Counter[str] = Counter()
    draws = []
    for subject_seed in subject_seeds(seed, n_subjects):
        subject = generate_v2(subject_seed, resolution, None, arm, keep_noise_free=True)  # type: ignore[arg-type]
        per_subject.append(subject_measures(subject))
        flair, t1w, volumes = lesion_contrasts(subject)
        lesions["flair"] += flair
        lesions["t1w"] += t1w
        lesions["volume"] += volumes
        regions.update(record.region for record in subject.lesions.lesions)
        draws.append(subject.draws)
    return per_subject, lesions, regions, draws


def _cohort_rows(
    per_subject: list[dict[str, float]],
    lesions: dict[str, list[float]],
    regions: Counter[str],
    arm: PhantomArm,
) -> list[str]:
    counts = [m["lesions"] for m in per_subject]
    loads = [m["lesion_load_ml"] for m in per_subject]
    volumes = np.asarray(lesions["volume"])
    flair, t1w = np.asarray(lesions["flair"]), np.asarray(lesions["t1w"])
    total = max(sum(regions.values()), 1)
    rows = [
        _row(
            "lesions per subject (components ≥ 24 mm³)",
            f"median {np.median(counts):.0f}, q95 {np.quantile(counts, 0.95):.0f}, "
            f"{sum(c < 5 for c in counts)} subjects < 5",
            "median 8–35, q95 ≤ 100, a few < 5",
            8 <= np.median(counts) <= 35 and np.quantile(counts, 0.95) <= 100,
        ),
        _row(
            "total lesion load (mL)",
            f"median {np.median(loads):.1f}, q95 {np.quantile(loads, 0.95):.1f}, "
            f"min {min(loads):.2f}",
            "median 2–15, q95 ≤ 60, min < 1",
            2 <= np.median(loads) <= 15 and np.quantile(loads, 0.95) <= 60 and min(loads) < 1,
        ),
        _row(
            "lesion volume (mm³)",
            f"median {np.median(volumes):.0f}; > 1 mL {np.mean(volumes > 1000):.1%}",
            "median 40–200; > 1 mL 2–15 %",
            40 <= np.median(volumes) <= 200 and 0.02 <= np.mean(volumes > 1000) <= 0.15,
        ),
    ]
    shares = {name: regions[name] / total for name in REGIONS}
    bounds = {
        "periventricular": (0.30, 0.55),
        "juxtacortical": (0.10, 0.30),
        "deep": (0.15, 0.35),
        "infratentorial": (0.03, 0.15),
    }
    rows.append(
        _row(
            "location shares (PV / JC / deep / infra)",
            " / ".join(f"{shares[name]:.2f}" for name in REGIONS),
            "0.30–0.55 / 0.10–0.30 / 0.15–0.35 / 0.03–0.15",
            all(low <= shares[name] <= high for name, (low, high) in bounds.items()),
        )
    )
    if arm.contrast == "swapped":
        rows.append(
            _row(
                "swapped: FLAIR / T1w lesion contrast (median)",
                f"{np.median(flair):+.2f} / {np.median(t1w):+.2f}",
                "+0.05 to +0.20 / −0.50 to −0.25",
                0.05 <= np.median(flair) <= 0.2 and -0.5 <= np.median(t1w) <= -0.25,
            )
        )
        return rows
    rows += [
        _row(
            "FLAIR lesion / NAWM − 1",
            f"median {np.median(flair):+.2f}, q05 {np.quantile(flair, 0.05):+.2f}",
            "median +0.25 to +0.60, q05 ≥ +0.05",
            0.25 <= np.median(flair) <= 0.6 and np.quantile(flair, 0.05) >= 0.05,
        ),
        _row(
            "T1w lesion / NAWM − 1",
            f"median {np.median(t1w):+.2f}; ≤ −0.05 {np.mean(t1w <= -0.05):.0%}, "
            f"≤ −0.25 {np.mean(t1w <= -0.25):.0%}, ≥ −0.02 {np.mean(t1w >= -0.02):.0%}",
            "median −0.30 to −0.10; ≤ −0.05 50–85 %, ≤ −0.25 10–35 %, ≥ −0.02 10–30 %",
            -0.3 <= np.median(t1w) <= -0.1
            and 0.5 <= np.mean(t1w <= -0.05) <= 0.85
            and 0.1 <= np.mean(t1w <= -0.25) <= 0.35
            and 0.1 <= np.mean(t1w >= -0.02) <= 0.3,
        ),
    ]
    return rows


def _subject_rows(per_subject: list[dict[str, float]], draws: list[dict]) -> list[str]:
    rows = []
    for name, target in REALISM_TARGETS.items():
        values = [m[name] for m in per_subject if np.isfinite(m[name])]
        within = np.mean([target.low <= v <= target.high for v in values])
        high = "" if np.isinf(target.high) else f"–{target.high:g}"
        rows.append(
            _row(
                target.description,
                f"{_spread(values)} ({within:.0%} of subjects within)",
                f"{target.low:g}{high}" if high else f"≥ {target.low:g}",
                bool(within == 1.0),
            )
        )
    texture = [m["flair_texture"] for m in per_subject]
    rows.append(
        _row(
            "FLAIR NAWM local residual / NAWM (noise included, this grid)",
            _spread(texture, 3),
            "0.03–0.08 at 1 mm",
            0.03 <= float(np.median(texture)) <= 0.08,
        )
    )
    dirty = np.mean([d["dawm_flair"] > 0 for d in draws])
    rows.append(
        _row("subjects with dirty-appearing WM", f"{dirty:.0%}", "30–60 %", 0.3 <= dirty <= 0.6)
    )
    mimics = [m["mimic_components"] for m in per_subject]
    rows.append(
        _row("mimic components per subject", _spread(mimics, 0), "present (> 0)", min(mimics) > 0)
    )
    anatomies = Counter(d["anatomy"] for d in draws)
    fields = Counter(d["field_strength"] for d in draws)
    rows.append(
        _row(
            "anatomies / field strengths",
            ", ".join(f"{k} {v}" for k, v in sorted(anatomies.items()))
            + "; "
            + ", ".join(f"{k} {v}" for k, v in sorted(fields.items())),
            "≥ 2 brains; 1.5 and 3 T",
            len(anatomies) >= 2 and len(fields) == 2,
        )
    )
    if "head_tissue_share" in per_subject[0]:
        share = [m["head_tissue_share"] for m in per_subject]
        bright = [m["head_bright_t1w"] for m in per_subject]
        rows.append(
            _row(
                "head arm: non-brain tissue share of the field of view / T1w q99 outside / NAWM",
                f"{_spread(share)} / {_spread(bright)}",
                "≥ 0.25 / ≥ 0.9",
                min(share) >= 0.25 and min(bright) >= 0.9,
            )
        )
    return rows


def realism_table(n_subjects: int, seed: int, resolution: int, arm: PhantomArm) -> None:
    """Generate ``n_subjects`` v2 subjects of ``arm`` and print the realism table."""
    per_subject, lesions, regions, draws = _cohort(n_subjects, seed, resolution, arm)
    print(f"v2 realism table: {n_subjects} subjects, seed {seed}, {resolution} mm, {arm}")
    print(f"{len(lesions['volume'])} lesion components measured")
    print("| property | measured: median [q05–q95] | target | within |")
    print("|---|---|---|---|")
    builders: list[Callable[[], list[str]]] = [
        lambda: _cohort_rows(per_subject, lesions, regions, arm),
        lambda: _subject_rows(per_subject, draws),
    ]
    for build in builders:
        for row in build():
            print(row)
