"""``max_lesions`` draws domains at random with the run's seed, never the raster-order prefix."""

from __future__ import annotations

import numpy as np

from instasal.instances import Instance, Instances
from instasal.pipeline.per_lesion import sample_domains
from instasal.typing import InstanceKind


def _domains(kinds: list[InstanceKind]) -> Instances:
    """One-voxel domains along x (ids in raster order, as ``find_instances`` numbers them)."""
    labels = np.zeros((len(kinds), 1, 1), dtype=np.int32)
    records = []
    for index, kind in enumerate(kinds, start=1):
        labels[index - 1] = index
        centre = (float(index - 1), 0.0, 0.0)
        records.append(
            Instance(index, 1.0, 1, centre, centre, ((index - 1, index), (0, 1), (0, 1)), kind)
        )
    return Instances(labels, np.eye(4), tuple(records))


FP: InstanceKind = "FP"
TP: InstanceKind = "TP"
TN: InstanceKind = "TN"
KINDS = [FP] * 30 + [TP] * 12 + [TN] * 3


def test_the_draw_is_seeded_capped_per_type_and_in_id_order() -> None:
    instances = _domains(KINDS)
    first = sample_domains(instances, 5, seed=4)
    assert first == sample_domains(instances, 5, seed=4)
    assert first != sample_domains(instances, 5, seed=5)
    counts = {kind: sum(r.kind == kind for r in first) for kind in ("FP", "TP", "TN")}
    assert counts == {"FP": 5, "TP": 5, "TN": 3}  # a type with fewer domains keeps them all
    assert [r.id for r in first] == sorted(r.id for r in first)
    assert sample_domains(instances, None, seed=4) == list(instances)


def test_every_domain_is_equally_likely_not_the_raster_prefix() -> None:
    instances = _domains(KINDS)
    prefix = {r.id for r in instances.of_kind("FP")[:5]}
    draws = [
        {r.id for r in sample_domains(instances, 5, seed=s) if r.kind == "FP"} for s in range(600)
    ]
    assert sum(draw == prefix for draw in draws) <= 1
    frequency = np.array([sum(i in draw for draw in draws) for i in range(1, 31)]) / len(draws)
    # each FP is drawn with probability 5 / 30; 600 draws: standard error about 0.015
    np.testing.assert_allclose(frequency, 5 / 30, atol=0.07)
    # the sample's mean position is unbiased (a prefix would sit at x = 2 of 0..29)
    mean_x = np.mean([np.mean([i - 1 for i in draw]) for draw in draws])
    assert abs(mean_x - 14.5) < 0.6
