"""Training: seeded, resumable to the same weights, validated, exported as the built-ins are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instasal.errors import ConfigurationError, ModelError
from instasal.models.architectures import build_network
from instasal.models.cards import read_card
from instasal.models.export import export_weights
from instasal.models.loaders import load_state_dict_file
from instasal.training import EpochRecord, TrainingConfig, TrainingSubject, train

TINY_UNET = {"channels": [4, 8], "strides": [2], "norm": "batch"}


def _subject(seed: int) -> TrainingSubject:
    rng = np.random.default_rng(seed)
    shape = (20, 20, 20)
    label = np.zeros(shape, bool)
    for _ in range(3):
        corner = rng.integers(2, 15, size=3)
        label[tuple(slice(c, c + 3) for c in corner)] = True
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    flair = brain * rng.normal(0.0, 0.3, shape) + 2.5 * label
    t1w = brain * rng.normal(0.0, 0.3, shape) - 0.5 * label
    image = np.stack([flair, t1w]).astype(np.float32)
    return TrainingSubject(f"sub-{seed}", image, label, brain, np.eye(4))


@pytest.fixture(scope="module")
def subjects() -> tuple[list[TrainingSubject], list[TrainingSubject]]:
    return [_subject(1), _subject(2)], [_subject(3)]


def _config(**changes: object) -> TrainingConfig:
    values: dict[str, object] = {
        "architecture": "unet",
        "patch_size": (16, 16, 16),
        "hyperparameters": TINY_UNET,
        "epochs": 2,
        "iterations_per_epoch": 1,
        "batch_size": 2,
        "threads": 1,
        "thresholds": (0.3, 0.5),
        "seed": 7,
    }
    return TrainingConfig(**(values | changes))  # type: ignore[arg-type]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class Interrupt(Exception):
    pass


def test_resumed_run_reproduces_the_uninterrupted_one(
    tmp_path: Path, subjects: tuple[list[TrainingSubject], list[TrainingSubject]]
) -> None:
    training, validation = subjects
    straight = train(_config(), training, validation, tmp_path / "straight")
    assert [r.epoch for r in straight.history] == [1, 2]
    assert (tmp_path / "straight" / "checkpoint.pt").is_file()

    def stop_after_first(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_config(), training, validation, tmp_path / "resumed", on_epoch_end=stop_after_first)
    resumed = train(_config(), training, validation, tmp_path / "resumed")
    assert [r.epoch for r in resumed.history] == [1, 2]
    for key, value in _weights(straight.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.card.threshold == straight.card.threshold


def test_same_seed_same_weights_other_seed_other_weights(
    tmp_path: Path, subjects: tuple[list[TrainingSubject], list[TrainingSubject]]
) -> None:
    training, validation = subjects
    config = _config(epochs=1)
    first = _weights(train(config, training, validation, tmp_path / "a").model)
    second = _weights(train(config, training, validation, tmp_path / "b").model)
    other = _weights(train(_config(epochs=1, seed=8), training, validation, tmp_path / "c").model)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_card_records_training_and_the_model_changed(
    tmp_path: Path, subjects: tuple[list[TrainingSubject], list[TrainingSubject]]
) -> None:
    training, validation = subjects
    config = _config(epochs=1, iterations_per_epoch=2)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        initial = build_network("unet", config.network_hyperparameters())
    result = train(config, training, validation, tmp_path / "run")
    changed = [
        k
        for k, v in result.model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, initial.state_dict()[k])
    ]
    assert changed, "training must change the weights"
    card = result.card
    assert card.threshold in config.thresholds
    assert card.patch_size == (16, 16, 16)
    assert card.training["training_subjects"] == ["sub-1", "sub-2"]
    assert card.training["validation_subjects"] == ["sub-3"]
    assert set(card.metrics["validation"]) >= {"ndsc", "tpr", "fdr", "fnr", "epoch"}
    assert card.gradcam_layer == "model.2.conv"  # a one-level U-Net's only decoder layer
    assert card.gradcam_layer in dict(result.model.named_modules())


def test_export_writes_weights_and_card_that_rebuild_the_model(
    tmp_path: Path, subjects: tuple[list[TrainingSubject], list[TrainingSubject]]
) -> None:
    training, validation = subjects
    result = train(_config(epochs=1), training, validation, tmp_path / "run")
    weights, card_path = export_weights(
        result.model,
        result.card,
        tmp_path / "weights",
        name="tiny",
        reproduce_command="instasal train …",
    )
    card = read_card(card_path)
    assert card.name == "tiny" and card.reproduce_command == "instasal train …"
    assert card.weights_dtype == "float32"
    rebuilt = build_network(card.architecture, card.hyperparameters)
    rebuilt.load_state_dict(load_state_dict_file(weights))
    rebuilt.eval()
    x = torch.from_numpy(validation[0].image[None, :, :16, :16, :16])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), result.model(x))
    with pytest.raises(ConfigurationError, match="exists already"):
        export_weights(result.model, result.card, tmp_path / "weights", name="tiny")


def test_resume_refuses_another_configuration(
    tmp_path: Path, subjects: tuple[list[TrainingSubject], list[TrainingSubject]]
) -> None:
    training, validation = subjects
    train(_config(epochs=1), training, validation, tmp_path / "run")
    with pytest.raises(ConfigurationError, match=r"another configuration \(differs in \['seed'\]"):
        train(_config(epochs=2, seed=9), training, validation, tmp_path / "run")
    with pytest.raises(ConfigurationError, match="exists; resume it"):
        train(_config(epochs=1), training, validation, tmp_path / "run", resume=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="corrupt training checkpoint"):
        train(_config(epochs=2), training, validation, tmp_path / "run")


def test_config_validation() -> None:
    with pytest.raises(ConfigurationError, match=r"must be a multiple of \(2, 2, 2\)"):
        _config(patch_size=(15, 16, 16))
    with pytest.raises(ConfigurationError, match="architecture must be one of"):
        _config(architecture="resnet")
    with pytest.raises(ConfigurationError, match="epochs must be >= 1"):
        _config(epochs=0)
    with pytest.raises(ConfigurationError, match=r"thresholds must lie in \(0, 1\)"):
        _config(thresholds=(0.0,))
    with pytest.raises(ConfigurationError, match="sampling mask is empty"):
        TrainingSubject(
            "s",
            np.zeros((2, 4, 4, 4), np.float32),
            np.zeros((4, 4, 4), bool),
            np.zeros((4, 4, 4), bool),
            np.eye(4),
        )


def test_loss_falls_and_lesions_are_found_on_a_learnable_task(
    subjects: tuple[list[TrainingSubject], list[TrainingSubject]], tmp_path: Path
) -> None:
    """Lesions 2.5 noise σ brighter in FLAIR: a working training loop must learn them."""
    training, validation = subjects
    config = _config(epochs=8, iterations_per_epoch=4, learning_rate=1e-2, thresholds=(0.5,))
    result = train(config, training, validation, tmp_path / "run")
    losses = [record.loss for record in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    # An untrained or broken loop gives Dice near 0 (the lesions are 1 % of the volume).
    best = max(record.metrics["dice"] for record in result.history)
    assert best > 0.5, [record.metrics for record in result.history]
