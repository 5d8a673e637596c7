"""Bad inputs fail with messages naming the argument; the model and the input are left as found."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import set_card
from instasal.errors import ConfigurationError, ModelError
from instasal.saliency import instance_smoothgrad

SHAPE = (8, 8, 8)


def _net(outputs: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.Conv3d(3, outputs, 1))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def domain() -> torch.Tensor:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[3:5, 4, 4] = True
    return mask


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"x": torch.zeros(*SHAPE)},
            r"x must have 4 dimensions \[C, X, Y, Z\].*got shape \(8, 8, 8\)",
        ),
        ({"x": torch.zeros(2, *SHAPE, dtype=torch.int64)}, "x must be floating point, got dtype"),
        ({"x": [[1.0]]}, "x must be a torch.Tensor or numpy array.*got list"),
        (
            {"domain": torch.ones(8, 8, 7, dtype=torch.bool)},
            r"domain 0 shape \(8, 8, 7\) does not match",
        ),
        ({"domain": torch.zeros(SHAPE, dtype=torch.bool)}, "domain 0 is empty"),
        ({"domain": torch.full(SHAPE, 2)}, "domain 0 must be boolean .*got dtype torch.int64"),
        ({"target": 2}, r"target must be 0\.\.1 for a model with 2 output channel\(s\), got 2"),
        ({"target": -1}, "target must be a non-negative integer, got -1"),
        ({"n_samples": 0}, "n_samples must be >= 1, got 0"),
        ({"noise_level": -0.1}, r"noise_level must be in \[0, 1\), got -0.1"),
        ({"noise_level": float("nan")}, r"noise_level must be in \[0, 1\), got nan"),
        ({"noise_level": 1.0}, r"noise_level must be in \[0, 1\), got 1.0"),
        ({"aggregation": "median"}, "aggregation must be one of .*got 'median'"),
        ({"context": "window"}, "context must be one of .*got 'window'"),
        ({"noise_range": "global"}, "noise_range must be one of .*got 'global'"),
        ({"engine": "vmap"}, "engine must be one of .*got 'vmap'"),
        ({"context": "patch"}, 'context="patch" needs patch_size'),
        ({"context": "patch", "patch_size": (4, 4)}, "patch_size must be a positive integer or 3"),
        (
            {"context": "patch", "patch_size": 4, "size_divisibility": 0},
            "size_divisibility must be",
        ),
        ({"rows_per_call": 0}, "rows_per_call must be >= 1, got 0"),
        ({"memory_budget_bytes": 0}, "memory_budget_bytes must be >= 1, got 0"),
    ],
)
def test_bad_arguments_raise_configuration_errors(
    x: torch.Tensor, domain: torch.Tensor, change: dict[str, object], message: str
) -> None:
    arguments: dict[str, Any] = {"x": x, "domain": domain, "n_samples": 1} | change
    with pytest.raises(ConfigurationError, match=message):
        instance_smoothgrad(_net(), **arguments)


def test_non_finite_input_is_refused(x: torch.Tensor, domain: torch.Tensor) -> None:
    x[0, 1, 1, 1] = float("nan")
    with pytest.raises(ConfigurationError, match="x holds NaN or infinite values"):
        instance_smoothgrad(_net(), x, domain)


def test_single_output_model_refuses_target_two(x: torch.Tensor, domain: torch.Tensor) -> None:
    with pytest.raises(ConfigurationError, match=r"target must be 0 or 1 .* 1 output channel"):
        instance_smoothgrad(_net(outputs=1), x, domain, target=2, n_samples=1)


class _Shrinking(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:]


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Shrinking(), r"model output has shape \(1, 2, 7, 8, 8\); expected \[1, K"),
        (_Pair(), "must return one logit tensor .*got tuple"),
    ],
)
def test_models_with_the_wrong_output_raise_model_errors(
    x: torch.Tensor, domain: torch.Tensor, model: nn.Module, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        instance_smoothgrad(model, x, domain, n_samples=1)


def test_patch_size_is_taken_from_the_model_card(x: torch.Tensor, domain: torch.Tensor) -> None:
    model = _net()
    explicit = instance_smoothgrad(model, x, domain, context="patch", patch_size=8, n_samples=1)
    set_card(model, {"patch_size": [8, 8, 8]})
    from_card = instance_smoothgrad(model, x, domain, context="patch", n_samples=1)
    assert torch.equal(from_card, explicit)


def test_numpy_input_and_domain_are_accepted(x: torch.Tensor, domain: torch.Tensor) -> None:
    model = _net()
    expected = instance_smoothgrad(model, x, domain, n_samples=1)
    given = instance_smoothgrad(model, x.numpy(), domain.numpy().astype(np.uint8), n_samples=1)
    assert torch.equal(given, expected)


def test_model_state_input_and_parameters_are_left_as_found(
    x: torch.Tensor, domain: torch.Tensor
) -> None:
    model = _net()
    model.train()
    model[2].eval()  # a mixed-mode model: each module's own flag must come back
    model[0].bias.requires_grad_(False)
    x.requires_grad_(True)
    original_x = x.detach().clone()
    parameters = {k: v.detach().clone() for k, v in model.state_dict().items()}
    instance_smoothgrad(model, x, domain, n_samples=2)
    assert model.training and model[1].training and not model[2].training
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and torch.equal(x.detach(), original_x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, parameters[key]), key  # BatchNorm running stats included


class _Failing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom inside the model")


def test_model_state_is_restored_after_an_exception_in_the_model(
    x: torch.Tensor, domain: torch.Tensor
) -> None:
    model = _Failing().train()
    with pytest.raises(RuntimeError, match="boom inside the model"):
        instance_smoothgrad(model, x, domain, n_samples=1)
    assert model.training and model.conv.training
    assert all(p.requires_grad for p in model.parameters())
