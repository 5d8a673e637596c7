"""nnU-Net v2 trained-model folders written by nnunetv2's own planning, training, checkpoint code.

The folder (``nnunet_artefacts``: folds ``all``, 0 and 1 trained by nnU-Net) is loaded; the model
is then compared with nnU-Net's own predictor on the same voxels, and :func:`predict_nnunet` (and
``segment``'s route through it) with the probabilities ``nnUNetv2_predict`` itself wrote, with and
without its mirroring test-time augmentation, on a subject stored flipped at a voxel size that
nnU-Net resamples.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import load_nifti
from instasal.cli import model_commands  # noqa: F401  (registers segment)
from instasal.cli._app import run_app
from instasal.errors import ConfigurationError, ModelError
from instasal.io import read_subject, zscore_nonzero
from instasal.models import attach_card, card_of, load_model, predict_logits, with_model_channels
from instasal.models.nnunet import NnUNetNetwork
from instasal.models.nnunet_predict import MirroredAverage, nnunet_tta_module, predict_nnunet
from instasal.models.segmentation import predict_subject
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.prepare import ResampledNetwork, prepare_subject
from instasal.saliency import SmoothGradConfig, instance_smoothgrad
from nnunet_artefacts import FLOAT16_PROBABILITY, nnunet_probability, subject_files

nnunetv2 = pytest.importorskip("nnunetv2")

pytestmark = pytest.mark.slow


def test_card_keeps_nnunet_preprocessing(trained_folder: Path) -> None:
    model = load_model(trained_folder / "fold_all")
    card = card_of(model)
    plans = json.loads((trained_folder / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    assert card.architecture == "nnunetv2"
    assert card.channel_names == ("FLAIR", "T1w")
    assert card.out_channels == 2 and card.output_activation == "softmax"
    assert card.normalisation == "zscore_nonzero"  # masked z-score on both channels
    # nnU-Net's (z, y, x) order reversed into ours
    assert card.patch_size == tuple(reversed(configuration["patch_size"]))
    assert card.spacing_mm == tuple(reversed(configuration["spacing"]))
    assert card.preprocessing["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert card.gradcam_layer in dict(model.named_modules())
    assert card.hyperparameters["trainer"] == "nnUNetTrainer"


def test_network_agrees_with_nnunet_predictor(trained_folder: Path) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = load_model(trained_folder / "fold_all")
    card = card_of(model)
    plans = PlansManager(json.loads((trained_folder / "plans.json").read_text()))
    dataset = json.loads((trained_folder / "dataset.json").read_text())
    configuration = plans.get_configuration("3d_fullres")
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration, 2, 2, enable_deep_supervision=False
    )
    checkpoint = torch.load(
        trained_folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    network.load_state_dict(checkpoint["network_weights"])
    # one window covers the subject, where Gaussian blending is the identity for us; nnU-Net's
    # float16 product of logits and the Gaussian's tiny border weights underflows there instead
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=False, use_mirroring=False, device=torch.device("cpu")
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration,
        [checkpoint["network_weights"]],
        dataset,
        "nnUNetTrainer",
        None,
    )
    # a skull-stripped, patch-sized, non-symmetric subject in our (i, j, k) order
    rng = np.random.default_rng(3)
    assert card.patch_size is not None
    shape = card.patch_size
    image = np.zeros((2, *shape), np.float32)
    image[:, 1:-1, 1:-1, 1:-1] = 1 + 0.2 * rng.standard_normal((2, *[s - 2 for s in shape]))
    image[0, 3:7, 4:9, 5:8] += 2.0
    spacing = list(card.spacing_mm or (2.0, 2.0, 2.0))
    nnunet_array = np.ascontiguousarray(image.transpose(0, 3, 2, 1))  # (c, z, y, x)
    preprocessor = configuration.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(
        nnunet_array, None, {"spacing": list(reversed(spacing))}, plans, configuration, dataset
    )
    theirs = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
    box = [slice(low, high) for low, high in properties["bbox_used_for_cropping"]]
    ours = predict_logits(model, torch.from_numpy(zscore_nonzero(image)))
    ours_cropped = ours.transpose(0, 3, 2, 1)[(slice(None), *box)]  # nnU-Net crops to non-zero
    assert ours_cropped.shape == tuple(theirs.shape)
    # nnU-Net accumulates logits in float16 (ENVIRONMENT.md): equal to half-precision round-off
    np.testing.assert_allclose(ours_cropped, theirs.numpy(), rtol=2e-3, atol=2e-3)


def test_fold_choice_and_bad_checkpoints(trained_folder: Path, tmp_path: Path) -> None:
    # the root is nnU-Net's choice without -f: the numbered folds, averaged; fold_all when named
    assert card_of(load_model(trained_folder)).hyperparameters["fold"] == "fold_0+fold_1"
    assert card_of(load_model(trained_folder / "fold_1")).hyperparameters["fold"] == "fold_1"
    copy = tmp_path / "trained"
    shutil.copytree(trained_folder, copy)
    shutil.rmtree(copy / "fold_0")
    shutil.rmtree(copy / "fold_1")
    assert card_of(load_model(copy)).hyperparameters["fold"] == "fold_all"
    shutil.copytree(copy / "fold_all", copy / "fold_0")
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    payload["inference_allowed_mirroring_axes"] = (0,)
    torch.save(payload, checkpoint)
    shutil.copytree(copy / "fold_all", copy / "fold_1")
    with pytest.raises(ModelError, match=r"the folds were trained differently .*; pass one fold"):
        load_model(copy)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: corrupt or unreadable nnU-Net"):
        load_model(copy / "fold_0")
    checkpoint.unlink()
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: checkpoint not found"):
        load_model(copy / "fold_0")


@pytest.mark.parametrize("tta", [True, False], ids=["default", "disable_tta"])
def test_predict_nnunet_reproduces_nnunetv2_predict(
    trained_folder: Path,
    flipped_subject: Path,
    nnunet_written: dict[bool, tuple[Path, Path]],
    tta: bool,
) -> None:
    model = load_model(trained_folder / "fold_all")
    assert card_of(model).orientation == "stored"  # nnU-Net's SimpleITK reader
    subject = read_subject(subject_files(flipped_subject))
    theirs, their_mask = nnunet_probability(nnunet_written[tta])
    ours = predict_nnunet(model, subject, tta=tta)
    assert ours.shape == subject.shape == their_mask.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=FLOAT16_PROBABILITY)
    # nnU-Net's mask is the argmax: foreground where p > 0.5 (ties, within round-off, aside)
    decided = np.abs(theirs - 0.5) > FLOAT16_PROBABILITY
    np.testing.assert_array_equal((ours > 0.5)[decided], (their_mask == 1)[decided])
    # segment's route: the preparation stage (a ResampledNetwork here) handing over to nnU-Net
    routed = predict_subject(model, subject, tta=tta)
    np.testing.assert_allclose(routed, theirs, rtol=0, atol=FLOAT16_PROBABILITY)
    one_channel = read_subject(subject_files(flipped_subject)[:1])
    with pytest.raises(ModelError, match="channel"):
        predict_nnunet(model, one_channel, tta=tta)


def test_mirroring_changes_the_prediction(
    trained_folder: Path, flipped_subject: Path, nnunet_written: dict[bool, tuple[Path, Path]]
) -> None:
    """The parity test above would fail if TTA were ignored: the two modes differ measurably."""
    with_tta, _ = nnunet_probability(nnunet_written[True])
    without, _ = nnunet_probability(nnunet_written[False])
    assert np.abs(with_tta - without).max() > 20 * FLOAT16_PROBABILITY
    subject = read_subject(subject_files(flipped_subject))
    ours = predict_nnunet(load_model(trained_folder / "fold_all"), subject, tta=False)
    assert np.abs(ours - with_tta).max() > 20 * FLOAT16_PROBABILITY


def test_mirrored_average_is_the_symmetrised_linear_map() -> None:
    """For a zero-padded convolution, flip∘conv_w∘flip = conv_flip(w): the mirrored average over
    axes A is the convolution with w averaged over its flips along A (a hand-derived oracle)."""
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, kernel_size=3, padding=1).double()
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    axes = (0, 2)
    weight = conv.weight.detach()
    flips = [(), (2,), (4,), (2, 4)]  # weight dims of spatial axes 0 and 2
    symmetric = torch.stack([torch.flip(weight, f) if f else weight for f in flips]).mean(dim=0)
    bias = conv.bias
    assert bias is not None
    expected = nn.functional.conv3d(x, symmetric, bias.detach(), padding=1)
    mirrored = MirroredAverage(conv, axes)
    output = mirrored(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    # differentiable: the input gradient of one output voxel is that of the symmetrised map
    (gradient,) = torch.autograd.grad(output[0, 1, 2, 3, 4], x)
    (oracle,) = torch.autograd.grad(expected[0, 1, 2, 3, 4], x)
    torch.testing.assert_close(gradient, oracle, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(output, conv(x))  # the kernel is not symmetric: mirroring matters
    with pytest.raises(ModelError, match="distinct spatial axes"):
        MirroredAverage(conv, (0, 3))


def test_tta_module_is_nnunet_mirroring(trained_folder: Path) -> None:
    """nnunet_tta_module's logits equal nnU-Net's own mirrored prediction of one window."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model = load_model(trained_folder / "fold_all")
    assert isinstance(model, NnUNetNetwork)
    setup = model.setup
    assert setup is not None and setup.mirroring_axes
    predictor = nnUNetPredictor(use_mirroring=True, device=torch.device("cpu"))
    predictor.manual_initialization(
        model.network,
        setup.plans_manager,
        setup.configuration_manager,
        [model.network.state_dict()],
        setup.dataset,
        setup.trainer_name,
        setup.mirroring_axes,
    )
    card = card_of(model)
    assert card.patch_size is not None
    x = torch.randn(1, 2, *card.patch_size, generator=torch.Generator().manual_seed(1))
    tta = nnunet_tta_module(model)
    assert card_of(tta).spacing_mm == card.spacing_mm and card_of(tta).gradcam_layer is None
    with torch.no_grad():
        ours = tta(x)
        theirs = predictor._internal_maybe_mirror_and_predict(x.permute(0, 1, 4, 3, 2))
    # same float32 forwards summed in another order
    torch.testing.assert_close(ours, theirs.permute(0, 1, 4, 3, 2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, model(x), atol=1e-3)


def test_explain_segments_as_nnunet_and_explains_the_mirrored_logit(
    trained_folder: Path,
    flipped_subject: Path,
    nnunet_written: dict[bool, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    model = load_model(trained_folder / "fold_all")
    theirs, _ = nnunet_probability(nnunet_written[True])
    # a high threshold keeps the lesion (and so the Jacobian rows per mirror) few; below the
    # peak of nnU-Net's own prediction (the tiny network's training varies) so one lesion exists
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1),
        gradcam=None,
        n_true_negatives=0,
        max_lesions=1,
        threshold=min(0.85, float(theirs.max()) - 0.05),
        saliency_of="tta",
        context="full",  # the whole-volume mirrored average, which the oracle below restates
    )
    result = explain_subject(subject_files(flipped_subject), model, tmp_path, settings=settings)
    probability = np.asarray(load_nifti(result.layout.probability).dataobj, dtype=np.float32)
    np.testing.assert_allclose(probability, theirs, rtol=0, atol=FLOAT16_PROBABILITY)
    assert len(result.table) == 1
    # Oracle: instance SmoothGrad called directly on the mean over the 8 mirrorings of the
    # network (at the model's voxel size, inside the resampling, as nnU-Net mirrors).
    assert nnunet_tta_module(model).axes == (0, 1, 2)  # the fixture's checkpoint mirrors all
    prepared = prepare_subject(
        with_model_channels(model, read_subject(subject_files(flipped_subject))), model
    )
    assert isinstance(prepared.network, ResampledNetwork)
    inner = prepared.network.network
    mirrored = attach_card(MirroredAverage(inner, (0, 1, 2)), card_of(inner))
    native_id = int(result.table["id"].iloc[0])
    domain = prepared.to_working(result.instances.mask(native_id))
    direct = instance_smoothgrad(
        ResampledNetwork(mirrored, prepared.network.spacing),
        prepared.x,
        torch.from_numpy(np.ascontiguousarray(domain)),
        target=card_of(model).target_class,
        n_samples=1,
        seed=settings.smoothgrad.seed,
    )
    expected = prepared.to_native(direct.numpy())
    written = load_nifti(result.layout.smoothgrad(native_id, "FLAIR")).get_fdata(dtype=np.float32)
    scale = float(np.abs(expected[0]).max())
    assert scale > 0
    # float32 round-off of sums over 8 mirrored forwards and their backward passes
    float32_round_off = 1e-5 * scale
    np.testing.assert_allclose(written, expected[0], rtol=0, atol=float32_round_off)
    peak = float(result.table["peak_FLAIR"].iloc[0])
    assert peak == pytest.approx(float(expected[0].max()), rel=0, abs=float32_round_off)
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["settings"]["saliency_of"] == "tta" and provenance["settings"]["tta"]
    report = result.report.read_text()
    assert "with mirroring TTA; saliency of the mirrored-average logit" in report
    with pytest.raises(ConfigurationError, match=r"turn Grad-CAM off"):
        ExplainSettings(saliency_of="tta")


def test_segment_cli_writes_nnunet_predictions_in_both_modes(
    trained_folder: Path,
    flipped_subject: Path,
    nnunet_written: dict[bool, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    files = [str(f) for f in subject_files(flipped_subject)]
    model = ["--model", str(trained_folder / "fold_all")]
    for tta, flag in ((True, []), (False, ["--no-tta"])):
        out = tmp_path / f"tta_{tta}"
        assert run_app(["segment", *files, *model, "--out", str(out), "--name", "s", *flag]) == 0
        written = load_nifti(out / "s_prob.nii.gz")
        theirs, _ = nnunet_probability(nnunet_written[tta])
        probability = np.asarray(written.dataobj, dtype=np.float32)
        np.testing.assert_allclose(probability, theirs, rtol=0, atol=FLOAT16_PROBABILITY)
        # on the input's own (flipped) grid and affine
        np.testing.assert_allclose(written.affine, load_nifti(files[0]).affine, atol=1e-6)


def _crafted(trained_folder: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the trained folder whose plans.json ``edit`` changed in place."""
    folder = tmp_path / "crafted"
    shutil.copytree(trained_folder, folder)
    plans_path = folder / "plans.json"
    plans = json.loads(plans_path.read_text())
    edit(plans)
    plans_path.write_text(json.dumps(plans))
    return folder


def _architectures(plans: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["architecture"] for c in plans["configurations"].values() if "architecture" in c]


@pytest.mark.parametrize("role", ["network_class_name", "nonlin"])
def test_plans_naming_code_outside_nnunets_packages_is_refused_unless_trusted(
    trained_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    marker = tmp_path / "pwned"
    module = f"planted_{role}"  # a fresh module per case: imports are cached
    (tmp_path / f"{module}.py").write_text(
        f"def build(*args, **kwargs):\n    open({str(marker)!r}, 'w').write('x')\n"
        "    raise ValueError('planted code ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def plant(plans: dict[str, Any]) -> None:
        for architecture in _architectures(plans):
            if role == "network_class_name":
                architecture["network_class_name"] = f"{module}.build"
            else:
                architecture["arch_kwargs"]["nonlin"] = f"{module}.build"

    folder = _crafted(trained_folder, tmp_path, plant)
    with pytest.raises(ModelError, match=rf"plans\.json: .*{module}\.build.*trust"):
        load_model(folder)
    assert not marker.exists()
    with pytest.raises(ModelError):  # trusted: nnU-Net calls it, then the build fails
        load_model(folder, trust_code=True)
    assert marker.exists()


COMMAND_NAMES = [
    "torch.nn.functional.torch.serialization.os.system",
    "torch.nn.modules.module.torch.serialization.os.system",
]


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_plans_whose_nonlin_reaches_os_system_run_nothing(
    trained_folder: Path, tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "pwned"

    def plant(plans: dict[str, Any]) -> None:
        for architecture in _architectures(plans):
            architecture["arch_kwargs"]["nonlin"] = name
            architecture["arch_kwargs"]["nonlin_kwargs"] = {"command": f"touch {marker}"}

    folder = _crafted(trained_folder, tmp_path, plant)
    with pytest.raises(ModelError, match=r"plans\.json: nonlin: .*trust"):
        load_model(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "key", "name"),
    [
        ("configuration", "preprocessor_name", "load_pickle"),
        ("configuration", "resampling_fn_data", "load_pickle"),
        ("configuration", "normalization_schemes", ["load_pickle", "ZScoreNormalization"]),
        ("plans", "label_manager", "load_json"),
        ("plans", "label_manager", "os.system"),
    ],
)
def test_plans_looking_up_helpers_nnunet_merely_imports_are_refused(
    trained_folder: Path, tmp_path: Path, where: str, key: str, name: object
) -> None:
    def plant(plans: dict[str, Any]) -> None:
        if where == "plans":
            plans[key] = name
        else:
            for configuration in plans["configurations"].values():
                configuration[key] = name

    folder = _crafted(trained_folder, tmp_path, plant)
    with pytest.raises(ModelError, match=rf"plans\.json: {key} .*nnU-Net's own"):
        load_model(folder)
