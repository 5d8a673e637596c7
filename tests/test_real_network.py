"""Instance SmoothGrad on a real network with real weights that no one here trained (issue 13).

The network is deepbet's brain-extraction box model (Fisch et al., deepbet 1.0.2, MIT), a
TorchScript LinkNet3d with 2.1 M parameters shipped in the wheel as ``data/models/bbox_model.pt``
(installed by the ``dev`` extra; ``pip install --no-deps deepbet==1.0.2`` is enough, the test
needs only the file). It takes ``[B, 1, X, Y, Z]`` with sides divisible by 32 and returns softmax
probabilities ``[B, 2, X, Y, Z]`` (background, brain). The image is the small real T1 that nibabel
ships for its tests (``nibabel/tests/data/anatomical.nii``, 33×41×25 at 2 mm), cut and padded to
32³ and normalised as deepbet does. Home-made tiny networks hide what such a network shows: batch
norm folded into TorchScript, dense gradients across the whole volume, saturated softmax outputs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from conftest import SmoothGradOptions
from instasal.models import card_of, load_model
from instasal.saliency import instance_smoothgrad

SIDE = 32
N_SAMPLES = 2
NOISE_LEVEL = 0.05
SEED = 11


def _deepbet_model_file() -> Path:
    try:
        path = Path(str(distribution("deepbet").locate_file("data/models/bbox_model.pt")))
    except PackageNotFoundError:
        pytest.fail("deepbet 1.0.2 is a test dependency: pip install --no-deps deepbet==1.0.2")
    assert path.is_file(), f"{path}: deepbet's wheel ships data/models/bbox_model.pt"
    return path


@pytest.fixture(scope="module")
def network() -> nn.Module:
    torch.set_num_threads(1)
    return load_model(_deepbet_model_file())


@pytest.fixture(scope="module")
def t1() -> torch.Tensor:
    """The real T1 as ``[1, 32, 32, 32]``: x cut to 32, y's central 32, z zero-padded from 25."""
    path = Path(str(distribution("nibabel").locate_file("nibabel/tests/data/anatomical.nii")))
    volume = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)
    assert volume.shape == (33, 41, 25)
    x = torch.zeros(1, SIDE, SIDE, SIDE)
    x[0, :, :, :25] = torch.from_numpy(volume[:SIDE, 4 : 4 + SIDE, :])
    low, high = x.quantile(0.005), x.quantile(0.995)  # deepbet's own normalisation
    x = ((x - low) / (high - low)).clamp(0, 1)
    return 0.226 * (x - x.mean()) / x.std() + 0.449


def _uncertain_voxels(network: nn.Module, x: torch.Tensor, count: int) -> torch.Tensor:
    """A domain of the ``count`` voxels whose brain probability is nearest 0.5."""
    with torch.no_grad():
        brain = network(x[None])[0, 1]
    flat = (brain - 0.5).abs().flatten().argsort()[:count]
    domain = torch.zeros(brain.numel(), dtype=torch.bool)
    domain[flat] = True
    return domain.reshape(brain.shape)


def _uncertain_row(network: nn.Module, x: torch.Tensor, length: int) -> torch.Tensor:
    """A compact domain: the voxel whose brain probability is nearest 0.5 and its next
    ``length - 1`` neighbours along z (a lesion-like row, small enough for a 32³ patch)."""
    i, j, k = _uncertain_voxels(network, x, 1).nonzero()[0].tolist()
    start = min(k, x.shape[-1] - length)
    domain = torch.zeros(x.shape[1:], dtype=torch.bool)
    domain[i, j, start : start + length] = True
    return domain


def _naive_smoothgrad(
    network: nn.Module, x: torch.Tensor, domain: torch.Tensor, window: tuple[slice, ...]
) -> torch.Tensor:
    """SPEC §2 written out: per noise draw on the whole grid, one ``autograd.grad`` per voxel of
    Ω on the forward pass over ``window``, the entry of largest magnitude kept (the earlier row on
    ties), averaged over the draws and placed in zeros outside the window."""
    generator = torch.Generator().manual_seed(SEED)
    sigma = NOISE_LEVEL * (x.amax() - x.amin())
    crop = (slice(None), *window)
    local = domain[window]
    total = torch.zeros_like(x[crop])
    for _ in range(N_SAMPLES):
        noisy = (x + sigma * torch.randn(x.shape, generator=generator))[crop]
        noisy = noisy[None].clone().requires_grad_(True)
        output = network(noisy)[0, 1]
        best = torch.zeros_like(noisy[0])
        for voxel in local.nonzero().tolist():
            (row,) = torch.autograd.grad(output[tuple(voxel)], noisy, retain_graph=True)
            best = torch.where(row[0].abs() > best.abs(), row[0], best)
        total += best
    result = torch.zeros_like(x)
    result[crop] = total / N_SAMPLES
    return result


def _assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 round-off of reordered sums over 2.1 M weights: 1e-4 of the map's
    largest magnitude (float32's 6e-8 grown by the depth of the network's reductions)."""
    scale = float(expected.abs().max())
    assert scale > 0, "a map of zeros would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4 * scale)


def test_the_network_segments_the_real_t1_into_brain_and_background(network, t1):
    assert card_of(network).channel_names == ("ch0",)
    assert card_of(network).out_channels == 2
    with torch.no_grad():
        probability = network(t1[None])[0]
    torch.testing.assert_close(probability.sum(0), torch.ones(SIDE, SIDE, SIDE))
    brain = probability[1] > 0.5
    assert 0.05 < float(brain.float().mean()) < 0.5  # a brain, not everything or nothing
    assert float(t1[0][brain].mean()) > float(t1[0][~brain].mean())  # brighter than background


@pytest.mark.parametrize("engine", ["batched", "auto"])
def test_engines_equal_the_naive_loop_on_the_real_network(network, t1, engine):
    domain = _uncertain_voxels(network, t1, 4)
    expected = _naive_smoothgrad(network, t1, domain, (slice(None),) * 3)
    saliency = instance_smoothgrad(
        network,
        t1,
        domain,
        target=1,
        n_samples=N_SAMPLES,
        noise_level=NOISE_LEVEL,
        seed=SEED,
        engine=engine,
    )
    assert float((expected != 0).float().mean()) > 0.5  # dense: the whole volume matters
    _assert_float32_close(saliency, expected)


def test_patch_context_equals_the_naive_loop_on_the_patch_and_is_zero_outside(
    network, t1, monkeypatch
):
    """In a 64×32×32 volume (the T1 padded along x) a 32³ patch around Ω is a different forward
    pass from the whole volume; it must equal the loop on that patch exactly."""
    wide = torch.zeros(1, 2 * SIDE, SIDE, SIDE)
    wide[:, :SIDE] = t1
    card = card_of(network).updated(patch_size=(SIDE,) * 3, size_divisibility=(SIDE,) * 3)
    monkeypatch.setattr(network, "card", card.to_dict())
    patched = network
    domain = torch.zeros(2 * SIDE, SIDE, SIDE, dtype=torch.bool)
    domain[:SIDE] = _uncertain_row(network, t1, 3)
    lo, hi = (int(v) for v in domain.nonzero()[:, 0].aminmax())
    start = min(max((lo + hi + 1) // 2 - SIDE // 2, 0), SIDE)  # centred, shifted inside
    window = (slice(start, start + SIDE), slice(None), slice(None))
    expected = _naive_smoothgrad(patched, wide, domain, window)
    common: SmoothGradOptions = {"n_samples": N_SAMPLES, "noise_level": NOISE_LEVEL, "seed": SEED}
    patch = instance_smoothgrad(patched, wide, domain, target=1, context="patch", **common)
    _assert_float32_close(patch, expected)
    full = instance_smoothgrad(patched, wide, domain, target=1, context="full", **common)
    outside = torch.ones_like(domain)
    outside[window] = False
    assert float(full[0][outside].abs().max()) > 0  # full context does see beyond the patch
    assert int(torch.count_nonzero(patch[0][outside])) == 0  # never computed there


def test_patch_spanning_the_volume_equals_full_context(network, t1, monkeypatch):
    """Where the patch covers the whole volume, patch and full are one forward pass."""
    card = card_of(network).updated(patch_size=(SIDE,) * 3)
    monkeypatch.setattr(network, "card", card.to_dict())
    patched = network
    domain = _uncertain_voxels(network, t1, 3)
    common: SmoothGradOptions = {"n_samples": N_SAMPLES, "noise_level": NOISE_LEVEL, "seed": SEED}
    patch = instance_smoothgrad(patched, t1, domain, target=1, context="patch", **common)
    full = instance_smoothgrad(patched, t1, domain, target=1, context="full", **common)
    _assert_float32_close(patch, full)
