"""The paper's findings beside what a cohort shows, decided by fixed, stated rules (SPEC §4).

Each rule is written before looking at any data and is never adjusted to a result: a finding
is "reproduced" when the rule holds, "not reproduced" when it is testable and fails, and "not
testable" when the cohort lacks what the rule needs (a domain type, the mean-aggregation table,
enough values).
Every threshold is :data:`~instasal.analyses.statistics.ALPHA` = 0.001, the level the paper reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from instasal.analyses.error_modes import ErrorModes
from instasal.analyses.reliance import ModalityReliance, SignPattern
from instasal.analyses.size import AggregationVsSize
from instasal.analyses.statistics import ALPHA

__all__ = [
    "Finding",
    "Verdict",
    "aggregation_finding",
    "error_modes_finding",
    "modality_finding",
    "sign_finding",
]

Verdict = Literal["reproduced", "not reproduced", "not testable"]

PAPER_ORDER: tuple[str, ...] = ("TP", "FP", "FN", "TN")


@dataclass(frozen=True)
class Finding:
    """One paper finding: what the paper says, what the data show, the rule and its verdict."""

    key: str
    title: str
    paper: str
    observed: str
    rule: str
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


def _g(value: float) -> str:
    return "n/a" if value != value else f"{value:.3g}"


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def _p(value: float) -> str:
    return "n/a" if value != value else (f"{value:.2g}" if value >= 1e-300 else "< 1e-300")


def error_modes_finding(result: ErrorModes) -> Finding:
    """TP > FP > FN > TN in median peak saliency, every pair p < 0.001 (paper Fig. 11)."""
    rule = (
        "all four types have ≥ 2 values; medians strictly ordered TP > FP > FN > TN; "
        f"all six Holm-adjusted two-sided Mann–Whitney p < {ALPHA:g}"
    )
    medians = ", ".join(
        f"{g.type} {_g(g.distribution.median)} (n={g.distribution.n})" for g in result.groups
    )
    worst = max((t.p_holm for t in result.tests if t.computable), default=float("nan"))
    observed = (
        f"medians {medians}; order {' > '.join(result.median_order) or 'none'}"
        f"{'' if result.strictly_ordered else ' (ties)'}; largest Holm p {_p(worst)}"
    )
    compared = tuple(g.type for g in result.groups)
    if compared != PAPER_ORDER or not all(t.computable for t in result.tests):
        verdict: Verdict = "not testable"
    else:
        ordered = result.median_order == PAPER_ORDER and result.strictly_ordered
        verdict = "reproduced" if ordered and worst < ALPHA else "not reproduced"
    return Finding(
        "error_modes",
        f"Error modes ({result.column})",
        "peak saliency distributions differ between TP, FP, FN and TN (Mann–Whitney U, all pairs "
        "p < 0.001); medians TP > FP > FN > TN",
        observed,
        rule,
        verdict,
    )


def modality_finding(result: ModalityReliance) -> Finding:
    """FLAIR dominates T1w (paper: models rely more on FLAIR than MPRAGE)."""
    first, second = result.channels
    rule = (
        f"median of peak_{first} − peak_{second} > 0 and paired two-sided Wilcoxon "
        f"signed-rank p < {ALPHA:g}"
    )
    observed = (
        f"median difference {_g(result.difference.median)} over {result.difference.n} lesions "
        f"({'/'.join(result.types)}); {first} larger in "
        f"{_percent(result.fraction_first_dominates)}; "
        f"p {_p(result.test.p_value)}; median reliance_{first} {_g(result.reliance.median)}"
    )
    if not result.test.computable:
        verdict: Verdict = "not testable"
    elif result.difference.median > 0 and result.test.p_value < ALPHA:
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    return Finding(
        "modality_reliance",
        f"Modality reliance ({first} vs {second})",
        "the models rely more on FLAIR than on MPRAGE/T1w",
        observed,
        rule,
        verdict,
    )


def sign_finding(result: SignPattern) -> Finding:
    """Positive saliency inside the lesion, negative around it (paper §3)."""
    rule = (
        f"median inside mean > 0 and median ring mean < 0, each with a two-sided Wilcoxon "
        f"signed-rank test against 0 at p < {ALPHA:g}"
    )
    observed = (
        f"inside: median {_g(result.inside.median)}, "
        f"{_percent(result.fraction_inside_positive)} positive, "
        f"p {_p(result.inside_test.p_value)} (n={result.inside.n}); ring: median "
        f"{_g(result.ring.median)}, {_percent(result.fraction_ring_negative)} negative, "
        f"p {_p(result.ring_test.p_value)} (n={result.ring.n}); both in "
        f"{_percent(result.fraction_both)} of lesions"
    )
    if not (result.inside_test.computable and result.ring_test.computable):
        verdict: Verdict = "not testable"
    elif (
        result.inside.median > 0
        and result.inside_test.p_value < ALPHA
        and result.ring.median < 0
        and result.ring_test.p_value < ALPHA
    ):
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    return Finding(
        "sign_pattern",
        f"Sign pattern ({result.channel}, inside vs 1–3 mm ring)",
        "positive saliency inside a lesion and negative in its neighbourhood",
        observed,
        rule,
        verdict,
    )


def aggregation_finding(result: AggregationVsSize | None) -> Finding:
    """Mean-aggregated peaks fall with lesion size, max-aggregated peaks do not (paper Fig. 7)."""
    rule = (
        f"Spearman ρ(volume, peak) < 0 with p < {ALPHA:g} for mean aggregation, and not "
        f"(ρ < 0 with p < {ALPHA:g}) for max aggregation"
    )
    paper = "mean aggregation lowers the saliency of large lesions; max aggregation does not"
    if result is None:
        return Finding(
            "aggregation_vs_size",
            "Aggregation vs lesion size",
            paper,
            "no mean-aggregation lesion table (lesions_mean.tsv) in this cohort",
            rule,
            "not testable",
        )
    observed = "; ".join(
        f"{name}: ρ {_g(c.rho)}, p {_p(c.p_value)} (n={c.n})"
        for name, c in (("max", result.max), ("mean", result.mean))
    )
    if not (result.max.computable and result.mean.computable):
        verdict: Verdict = "not testable"
    else:
        mean_falls = result.mean.rho < 0 and result.mean.p_value < ALPHA
        max_falls = result.max.rho < 0 and result.max.p_value < ALPHA
        verdict = "reproduced" if mean_falls and not max_falls else "not reproduced"
    return Finding(
        "aggregation_vs_size",
        f"Aggregation vs lesion size (peak_{result.channel})",
        paper,
        observed,
        rule,
        verdict,
    )
