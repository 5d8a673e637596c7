"""The README's Python example runs as written, with only ``instasal.`` names.

The text is taken from README.md and executed unchanged in a folder holding ``sub-001_FLAIR`` and
``sub-001_T1w``; only the model behind the name ``"unet"`` is a tiny one with a card (the built-in
U-Net would take minutes at N = 50 on a CPU), so every call, argument and attribute is the README's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import PointwiseLinear, set_card, write_channels

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def _tiny_model(name: str, **_: object) -> nn.Module:
    assert name == "unet"
    model = PointwiseLinear()
    set_card(
        model,
        {
            "name": "unet",
            "architecture": "module",
            "patch_size": [16, 16, 16],
            "threshold": 0.5,
            "orientation": "RAS",
        },
    )
    return model


def test_the_readme_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import instasal.models
    import instasal.pipeline.explain

    example = _example()
    assert re.findall(r"^(?:from|import) .*$", example, re.M) == ["import instasal"]
    rng = np.random.default_rng(0)
    flair = rng.normal(10.0, 0.2, (16, 16, 16)).astype(np.float32)
    flair[5:7, 5:7, 5:7] = 40.0
    t1w = rng.normal(10.0, 0.2, (16, 16, 16)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w}, affine, stem="sub-001")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(instasal.models, "load_model", _tiny_model)
    monkeypatch.setattr(instasal.pipeline.explain, "load_model", _tiny_model)
    monkeypatch.setattr(instasal, "load_model", _tiny_model, raising=False)

    namespace: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), namespace)

    saliency = namespace["saliency"]
    assert isinstance(saliency, torch.Tensor)
    assert tuple(saliency.shape) == (2, 16, 16, 16)
    # the pointwise model's lesion logit is 1.5·FLAIR − 0.5·T1w: its only non-zero rows are Ω's
    inside = torch.from_numpy(np.asarray(namespace["lesions"].mask(1)))  # type: ignore[attr-defined]
    assert bool((saliency[0][inside] > 0).all())
    assert bool((saliency[:, ~inside] == 0).all())
    result = namespace["result"]
    assert len(result.table) == 1  # type: ignore[attr-defined]
    assert (tmp_path / "results" / "sub-001_lesions.tsv").exists()
