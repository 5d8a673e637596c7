"""Noise draws forwarded together: against a per-draw full-Jacobian oracle (SPEC §2)."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from torch import nn

from instasal.saliency import SmoothGradConfig, instance_smoothgrad, instance_smoothgrad_many
from instasal.saliency.noise import noise_sigmas

# float32 round-off of a few hundred multiply-adds, relative to the map's largest entry.
ROUND_OFF = 1e-5


class _Bent(nn.Module):
    """A small non-linear network: the Jacobian rows change from draw to draw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first = nn.Conv3d(2, 4, 3, padding=1)
        self.second = nn.Conv3d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


class _MixesTheBatch(_Bent):
    """Scales by the batch mean: a draw's logits depend on the other draws of its batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * (1 + out.mean(dim=0, keepdim=True))


def _oracle(model, x, domain, *, n_samples, seed, aggregation, noise_level=0.05):
    """Per draw, alone: the full Jacobian of the target logits, aggregated over Ω; then the mean."""
    generator = torch.Generator().manual_seed(seed)
    scale = noise_sigmas(x, noise_level, "per_channel").reshape(-1, 1, 1, 1)
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noisy = x + torch.randn(x.shape, generator=generator) * scale

        def logits(inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs[None])[0, 1][domain]

        jacobian = torch.autograd.functional.jacobian(logits, noisy)  # [|Ω|, C, X, Y, Z]
        if aggregation == "mean":
            total += jacobian.mean(dim=0)
        else:
            index = jacobian.abs().argmax(dim=0, keepdim=True)
            total += jacobian.gather(0, index)[0]
    return total / n_samples


@pytest.fixture
def case():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7)
    domain = torch.zeros(8, 9, 7, dtype=torch.bool)
    domain[3:5, 4:6, 2:5] = True
    return _Bent().eval(), x, domain


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("engine", ["naive", "batched"])
@pytest.mark.parametrize("draws_per_pass", [1, 2, 3, None])
def test_packed_draws_equal_the_per_draw_oracle(case, aggregation, engine, draws_per_pass):
    model, x, domain = case
    expected = _oracle(model, x, domain, n_samples=5, seed=7, aggregation=aggregation)
    got = instance_smoothgrad(
        model,
        x,
        domain,
        n_samples=5,
        seed=7,
        aggregation=aggregation,
        engine=engine,
        draws_per_pass=draws_per_pass,
    )
    gap = float((got - expected).abs().max()) / float(expected.abs().max())
    assert gap < ROUND_OFF


def test_draws_really_differ_so_the_oracle_can_tell_packings_apart(case):
    model, x, domain = case
    one = _oracle(model, x, domain, n_samples=1, seed=7, aggregation="max")
    five = _oracle(model, x, domain, n_samples=5, seed=7, aggregation="max")
    assert float((one - five).abs().max()) > 100 * ROUND_OFF * float(five.abs().max())


def test_a_model_mixing_the_batch_is_run_one_draw_at_a_time(case):
    _, x, domain = case
    model = _MixesTheBatch().eval()
    expected = _oracle(model, x, domain, n_samples=4, seed=1, aggregation="max")
    got = instance_smoothgrad(model, x, domain, n_samples=4, seed=1, draws_per_pass=4)
    gap = float((got - expected).abs().max()) / float(expected.abs().max())
    assert gap < ROUND_OFF


def test_progress_counts_every_draws_rows_once_when_packed(case):
    model, x, domain = case
    other = torch.zeros_like(domain)
    other[0, 0, 0] = True
    calls: list[tuple[float, float]] = []
    instance_smoothgrad_many(
        model,
        x,
        {1: domain, 2: other},
        SmoothGradConfig(n_samples=5, draws_per_pass=2),
        progress=lambda _stage, done, total: calls.append((done, total)),
    )
    rows = 5 * (int(domain.sum()) + 1)
    assert calls[-1] == (rows, rows)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(calls))


def test_draws_per_pass_must_be_positive(case):
    from instasal.errors import ConfigurationError

    model, x, domain = case
    with pytest.raises(ConfigurationError, match="draws_per_pass"):
        instance_smoothgrad(model, x, domain, n_samples=2, draws_per_pass=0)


@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_channels_last_input_gives_the_oracle_map_contiguous(case, engine):
    model, x, domain = case
    expected = _oracle(model, x, domain, n_samples=3, seed=2, aggregation="max")
    got = instance_smoothgrad(
        model, x, domain, n_samples=3, seed=2, engine=engine, memory_format="channels_last"
    )
    assert got.is_contiguous()
    gap = float((got - expected).abs().max()) / float(expected.abs().max())
    assert gap < ROUND_OFF


class _Sleeps(_Bent):
    """A forward pass that costs ``per_call + per_draw_squared × B²`` seconds for a batch of B:
    a fixed cost that packing shares, or one that grows faster than the batch (activations
    leaving the caches); records the batch sizes of the differentiated passes."""

    def __init__(self, per_call: float, per_draw_squared: float) -> None:
        super().__init__()
        self.per_call, self.per_draw_squared = per_call, per_draw_squared
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # not the no-grad check that batches are independent
            self.batches.append(x.shape[0])
        time.sleep(self.per_call + self.per_draw_squared * x.shape[0] ** 2)
        return super().forward(x)


@pytest.mark.parametrize(
    ("per_call", "per_draw_squared", "then"),
    [(0.05, 0.0, [3]), (0.0, 0.01, [1, 1, 1])],
    ids=["fixed-cost-packs", "growing-cost-runs-one-draw"],
)
def test_draws_per_pass_is_chosen_by_timing_packed_against_one_draw(
    per_call: float, per_draw_squared: float, then: list[int]
) -> None:
    model = _Sleeps(per_call, per_draw_squared).eval()
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    domain = torch.zeros(8, 8, 8, dtype=torch.bool)
    domain[3:5, 4, 4] = True
    config = SmoothGradConfig(n_samples=13, engine="naive")
    first = instance_smoothgrad_many(model, x, {1: domain}, config)[1]
    # 1 draw (memory), 8 packed and 1 alone, both timed; the cheaper per draw for the rest
    assert model.batches == [1, 8, 1, *then]
    model.batches.clear()
    again = instance_smoothgrad_many(model, x, {1: domain}, config)[1]
    assert model.batches == [1, *([8, 4] if then == [3] else [1] * 12)]  # remembered
    one_by_one = instance_smoothgrad_many(
        model, x, {1: domain}, SmoothGradConfig(n_samples=13, engine="naive", draws_per_pass=1)
    )[1]
    scale = float(one_by_one.abs().max())
    for got in (first, again):
        torch.testing.assert_close(got, one_by_one, rtol=0, atol=ROUND_OFF * scale)
