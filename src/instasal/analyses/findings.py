"""The paper's findings beside what a cohort shows, decided by fixed, stated rules (SPEC §4).

Each rule is written before looking at any data and is never adjusted to a result: a finding
is "reproduced" when the rule holds, "not reproduced" when it is testable and fails, "not
testable" when the cohort lacks what the rule needs (a domain type, the mean-aggregation table,
enough values), and "not testable at this n" when its test is computed but cannot reach the
threshold with so few values, whatever they are (6 lesions: a Wilcoxon signed-rank p is at least
2/2⁶ = 0.031); ``note`` then says how many values would do.
Every threshold is :data:`~instasal.analyses.statistics.ALPHA` = 0.001, the level the paper reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from instasal.analyses.error_modes import ErrorModes
from instasal.analyses.reliance import ModalityReliance, SignPattern
from instasal.analyses.size import AggregationVsSize
from instasal.analyses.statistics import (
    ALPHA,
    SIZE_EQUIVALENCE_MARGIN,
    equivalence_sufficient_n,
    holm,
    least_sufficient_n,
    smallest_p_rank_sum,
    smallest_p_signed_rank,
    spearman_lower_bound,
)
from instasal.typing import Verdict

__all__ = [
    "Finding",
    "Verdict",
    "aggregation_finding",
    "error_modes_finding",
    "modality_finding",
    "sign_finding",
]


PAPER_ORDER: tuple[str, ...] = ("TP", "FP", "FN", "TN")


@dataclass(frozen=True)
class Finding:
    """One paper finding: what the paper says, what the data show, the rule and its verdict;
    ``note`` says, for "not testable at this n", the smallest p the test can reach and the
    number of values that would let it reach the threshold."""

    key: str
    title: str
    paper: str
    observed: str
    rule: str
    verdict: Verdict
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


def _g(value: float) -> str:
    return "n/a" if value != value else f"{value:.3g}"


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def _p(value: float) -> str:
    return "n/a" if value != value else (f"{value:.2g}" if value >= 1e-300 else "< 1e-300")


def _too_few(test: str, n_text: str, smallest: float, needed: int | None, unit: str) -> str:
    """The note of a test that cannot reach α at this n: its smallest p and the n that would."""
    enough = f"{needed} or more {unit}" if needed is not None else f"more than 200 {unit}"
    return (
        f"with {n_text} the smallest p {test} is {_p(smallest)}, not below "
        f"{ALPHA:g}: it needs {enough}"
    )


def _signed_rank_limit(counts: dict[str, int]) -> str:
    """The note when a Wilcoxon signed-rank test of one of ``counts`` (name: n) cannot reach α,
    else ""."""
    for name, n in counts.items():
        smallest = smallest_p_signed_rank(n)
        if not smallest < ALPHA:
            needed = least_sufficient_n(smallest_p_signed_rank)
            return _too_few(
                "a Wilcoxon signed-rank test can give", f"{n} {name}", smallest, needed, name
            )
    return ""


def _rank_sum_family_limit(sizes: list[tuple[int, int]]) -> str:
    """The note when every one of these Holm-corrected Mann–Whitney tests (sample sizes per pair)
    cannot reach α, else ""."""

    def largest_holm(pairs: list[tuple[int, int]]) -> float:
        return float(max(holm([smallest_p_rank_sum(a, b) for a, b in pairs])))

    def with_each_type(k: int) -> float:
        return largest_holm([(k, k)] * len(sizes))

    smallest = largest_holm(sizes)
    if smallest < ALPHA:
        return ""
    counts = "/".join(str(n) for n in sorted({n for pair in sizes for n in pair}))
    return _too_few(
        f"all {len(sizes)} Holm-corrected Mann–Whitney tests can reach together",
        f"{counts} domains per type",
        smallest,
        least_sufficient_n(with_each_type),
        "domains of each type",
    )


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
    note = ""
    if compared != PAPER_ORDER or not all(t.computable for t in result.tests):
        verdict: Verdict = "not testable"
    elif note := _rank_sum_family_limit([(t.n_first, t.n_second) for t in result.tests]):
        verdict = "not testable at this n"
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
        note,
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
    note = ""
    if not result.test.computable:
        verdict: Verdict = "not testable"
    elif note := _signed_rank_limit({"lesions": result.difference.n}):
        verdict = "not testable at this n"
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
        note,
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
    note = ""
    if not (result.inside_test.computable and result.ring_test.computable):
        verdict: Verdict = "not testable"
    elif note := _signed_rank_limit({"inside means": result.inside.n, "ring means": result.ring.n}):
        verdict = "not testable at this n"
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
        note,
    )


def aggregation_finding(result: AggregationVsSize | None) -> Finding:
    """Mean-aggregated peaks fall with lesion size, max-aggregated peaks do not (paper Fig. 7).

    "Does not fall" is shown, not assumed: the lower one-sided ``1 − α`` bound of ρ for max
    aggregation must lie above −:data:`~instasal.analyses.statistics.SIZE_EQUIVALENCE_MARGIN`
    (an equivalence test; the rule read "no significant fall" before, which absence of evidence
    passes, and passed with ρ = +0.61).
    """
    margin = SIZE_EQUIVALENCE_MARGIN
    rule = (
        f"Spearman ρ(volume, peak) < 0 with p < {ALPHA:g} for mean aggregation, and for max "
        f"aggregation the lower one-sided {1 - ALPHA:.1%} bound of ρ (Fisher z, SE "
        f"√(1.06/(n − 3))) above −{margin:g} (at most a weak fall)"
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
    bound = spearman_lower_bound(result.max.rho, result.max.n)
    observed = "; ".join(
        f"{name}: ρ {_g(c.rho)}, p {_p(c.p_value)} (n={c.n})"
        for name, c in (("max", result.max), ("mean", result.mean))
    )
    observed += f"; max ρ lower bound {_g(bound)}"
    note = ""
    needed = equivalence_sufficient_n(margin)
    if not (result.max.computable and result.mean.computable):
        verdict: Verdict = "not testable"
    else:
        mean_falls = result.mean.rho < 0 and result.mean.p_value < ALPHA
        max_holds = bound > -margin
        verdict = "reproduced" if mean_falls and max_holds else "not reproduced"
        if not max_holds and result.max.n < needed:
            note = (
                f"with {result.max.n} lesions a flat max (ρ = 0) would have the lower bound "
                f"{_g(spearman_lower_bound(0.0, result.max.n))}, not above −{margin:g}: only a "
                f"rising max passes here; {needed} or more lesions let a flat one pass"
            )
    return Finding(
        "aggregation_vs_size",
        f"Aggregation vs lesion size (peak_{result.channel})",
        paper,
        observed,
        rule,
        verdict,
        note,
    )
