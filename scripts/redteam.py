#!/usr/bin/env python
"""Red-team instasal's command line: bad files, bad outputs, kill -9, concurrency, crafted models.

Every case runs the real CLI (``python -m instasal.cli``) as a subprocess on tiny inputs built
here (16³-sized subjects, a 1×1×1-convolution TorchScript model) and is judged from outside:

- ``refused``: the run must exit non-zero with one ``error:`` line and no traceback;
- ``handled``: it must exit 0 (with the ``note:`` or result the case names);
- ``resumed``: after ``kill -9`` a rerun must exit 0 and give the table an uninterrupted run gives.

Outcomes: ``handled``, ``traceback``, ``wrong exit``, ``data lost`` (results of a run gone or
changed without ``--overwrite``), ``code ran`` (a crafted model ran its code), ``clash`` (two
processes wrote the same results), ``left over`` (a dead run's temporary kept). A full run takes a
few minutes on 2 cores. Read-only and full disks are real tmpfs mounts when this runs as root,
else simulated by failing every write under the output folder with EROFS / ENOSPC.

Usage::

    python scripts/redteam.py [--keep DIR] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gzip
import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from instasal.folders import host_tag

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (26, 16, 16)
TIMEOUT_S = 240

# run a command with every write under $REDTEAM_FAIL_UNDER failing with errno $REDTEAM_ERRNO
_FAULTY_WRITES = """
import builtins, os, sys
root, code = os.path.realpath(os.environ["REDTEAM_FAIL_UNDER"]), int(os.environ["REDTEAM_ERRNO"])
def _under(path):
    return isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(root)
def _fail(path):
    raise OSError(code, os.strerror(code), os.fspath(path))
_open, _os_open, _mkdir = builtins.open, os.open, os.mkdir
def _checked_open(file, mode="r", *args, **kwargs):
    if _under(file) and any(c in mode for c in "wax+"):
        _fail(file)
    return _open(file, mode, *args, **kwargs)
def _checked_os_open(path, flags, *args, **kwargs):
    if _under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _fail(path)
    return _os_open(path, flags, *args, **kwargs)
def _checked_mkdir(path, *args, **kwargs):
    if _under(path):
        _fail(path)
    return _mkdir(path, *args, **kwargs)
builtins.open, os.open, os.mkdir = _checked_open, _checked_os_open, _checked_mkdir
from instasal.cli import main
sys.argv = ["instasal", *sys.argv[1:]]
main()
"""


@dataclass
class Run:
    """One finished subprocess."""

    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.text

    def error_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        return lines[0] if lines else (self.err.strip().splitlines() or [""])[-1]


@dataclass
class Outcome:
    name: str
    expected: str
    outcome: str
    detail: str = ""


@dataclass
class Lab:
    """The tiny inputs every case uses, in one temporary folder."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def cli(self, *args: str | Path, wrapper: str | None = None) -> list[str]:
        head = (
            [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "instasal.cli"]
        )
        return [*head, "--threads", "1", *[str(a) for a in args]]

    def run(
        self,
        *args: str | Path,
        wrapper: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = TIMEOUT_S,
    ) -> Run:
        done = subprocess.run(
            self.cli(*args, wrapper=wrapper),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env | (env or {}),
            cwd=self.root,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cli(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.root,
        )


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)  # type: ignore[attr-defined]


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _subject(folder: Path, participant: str, seed: int, lesions: int = 1) -> list[Path]:
    """A 26×16×16 subject at 2 mm with ``lesions`` bright 3³ FLAIR lesions, in BIDS layout."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, bool)
    brain[1:25, 1:15, 1:15] = True
    flair = np.where(brain, rng.normal(10, 0.2, SHAPE), 0).astype(np.float32)
    t1w = np.where(brain, rng.normal(10, 0.2, SHAPE), 0).astype(np.float32)
    corners = [(2 + 6 * (k % 4), 3 + 6 * (k // 4 % 2), 3 + 6 * (k // 8)) for k in range(lesions)]
    for corner in corners:
        flair[tuple(slice(c, c + 3) for c in corner)] = 40.0
    anat = folder / participant / "anat"
    files = [
        _save(anat / f"{participant}_FLAIR.nii.gz", flair),
        _save(anat / f"{participant}_T1w.nii.gz", t1w),
    ]
    masks = folder / "derivatives" / "manual" / participant / "anat"
    _save(masks / f"{participant}_desc-lesion_mask.nii.gz", (flair > 30).astype(np.uint8))
    _save(masks / f"{participant}_desc-brain_mask.nii.gz", brain.astype(np.uint8))
    return files


def _model(folder: Path, name: str, card: dict[str, object], layers: str = "pointwise") -> Path:
    """A TorchScript model with a sidecar card: lesion logit 1.5·FLAIR − 0.5·T1w − 2 (1×1×1), or
    ``layers="deep"``: two 3³ convolutions (a receptive field, slower backward passes)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if layers == "pointwise":
        conv = nn.Conv3d(2, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([0.0, -2.0]))  # type: ignore[union-attr]
            conv.weight[1, 0] = 1.5
            conv.weight[1, 1] = -0.5
        network: nn.Module = nn.Sequential(conv)
    else:
        network = nn.Sequential(
            nn.Conv3d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 2, 3, padding=1)
        )
    path = folder / f"{name}.pt"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


CARD = {
    "threshold": 0.5,
    "patch_size": list(SHAPE),
    "channel_names": ["FLAIR", "T1w"],
    "orientation": "RAS",
    "gradcam_layer": "0",
}
FAST = ["--n-samples", "2", "--n-true-negatives", "0"]
"""Fewer samples and no TN domains for speed; Grad-CAM++ on, as a user runs it."""


def build(root: Path) -> Lab:
    lab = Lab(root)
    pythonpath = os.pathsep.join([str(ROOT / "src"), str(root), os.environ.get("PYTHONPATH", "")])
    lab.env = dict(os.environ) | {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    lab.env.pop("FORCE_COLOR", None)
    _subject(root / "data", "sub-01", seed=1)
    _subject(root / "data", "sub-02", seed=2)
    _subject(root / "many", "sub-01", seed=3, lesions=8)
    _model(root, "linear", CARD)
    _model(root, "nopatch", {k: v for k, v in CARD.items() if k != "patch_size"})
    return lab


def _images(lab: Lab, folder: str = "data", participant: str = "sub-01") -> list[Path]:
    anat = lab.path(folder, participant, "anat")
    return [anat / f"{participant}_FLAIR.nii.gz", anat / f"{participant}_T1w.nii.gz"]


def _explain(
    lab: Lab,
    images: list[Path],
    out: Path,
    *flags: str | Path,
    model: str = "linear.pt",
    **kwargs: Any,
) -> Run:
    return lab.run("explain", *images, "--model", model, "--out", out, *FAST, *flags, **kwargs)


def _finished_copy(lab: Lab, out: Path) -> Run | None:
    """A copy at ``out`` of one finished explain run (made once); the failed run when it fails."""
    base = lab.path("out", "finished")
    if not (base / "run.json").exists():
        run = _explain(lab, _images(lab), base)
        if run.rc != 0:
            return run
    shutil.copytree(base, out)
    return None


def _table(out: Path) -> str | None:
    tables = sorted(out.glob("*_lesions.tsv"))
    return tables[0].read_text() if tables else None


def judge(run: Run, expected: str) -> tuple[str, str]:
    """The generic outcome of one run against what was expected, and the line shown."""
    if run.traceback:
        return "traceback", run.err.strip().splitlines()[-1] if run.err.strip() else ""
    if expected == "refused":
        errors = [line for line in run.err.splitlines() if line.startswith("error:")]
        if run.rc == 0:
            return "wrong exit", "exit 0"
        if len(errors) != 1:
            return "wrong exit", f"exit {run.rc} without one error line: {run.err.strip()[:120]}"
        return "handled", errors[0]
    if run.rc != 0:
        return "wrong exit", f"exit {run.rc}: {run.error_line()}"
    return "handled", ""


# ---------------------------------------------------------------- cases: bad input files


def _bad_image_case(make: Callable[[Lab], list[Path]]) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        images = make(lab)
        return judge(_explain(lab, images, lab.path("out", make.__name__)), "refused")

    return case


def garbage_nifti(lab: Lab) -> list[Path]:
    bad = lab.path("bad", "garbage_FLAIR.nii.gz")
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(gzip.compress(os.urandom(400)))
    return [bad, _images(lab)[1]]


def truncated_gzip(lab: Lab) -> list[Path]:
    data = _images(lab)[0].read_bytes()
    bad = lab.path("bad", "truncated_FLAIR.nii.gz")
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(data[: len(data) // 2])
    return [bad, _images(lab)[1]]


def _header_claiming(lab: Lab, name: str, shape: tuple[int, ...], two: bool = False) -> Path:
    """A valid one-voxel NIfTI whose header's ``dim`` is then rewritten to claim ``shape``."""
    kind = nib.Nifti2Image if two else nib.Nifti1Image
    raw = bytearray(kind(np.zeros((1, 1, 1), np.float32), AFFINE).to_bytes())
    dims = [len(shape), *shape, *[1] * (7 - len(shape))]
    if two:
        raw[16 : 16 + 64] = np.array(dims, dtype="<i8").tobytes()
    else:
        raw[40 : 40 + 16] = np.array(dims, dtype="<i2").tobytes()
    bad = lab.path("bad", name)
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(bytes(raw))
    return bad


def huge_header(lab: Lab) -> list[Path]:
    return [
        _header_claiming(lab, "huge_FLAIR.nii", (10000, 10000, 10000), two=True),
        _images(lab)[1],
    ]


def int64_overflow_header(lab: Lab) -> list[Path]:
    claim = (2**40, 2**40, 2**40)  # the voxel count overflows int64
    return [_header_claiming(lab, "overflow_FLAIR.nii", claim, two=True), _images(lab)[1]]


def moderate_header(lab: Lab) -> list[Path]:
    return [_header_claiming(lab, "moderate_FLAIR.nii", (30000, 30000, 1)), _images(lab)[1]]


def _volume_case(
    name: str, change: Callable[[np.ndarray], np.ndarray], affine: np.ndarray = AFFINE
) -> Callable[[Lab], list[Path]]:
    def make(lab: Lab) -> list[Path]:
        flair, t1w = _images(lab)
        data = _array(t1w)
        return [flair, _save(lab.path("bad", f"{name}_T1w.nii.gz"), change(data), affine)]

    make.__name__ = name
    return make


def _with_nan(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data[3, 3, 3] = np.nan
    return data


def _with_inf(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data[3, 3, 3] = np.inf
    return data


def four_d_image(lab: Lab) -> list[Path]:
    stacked = np.stack([_array(p) for p in _images(lab)] * 2, axis=-1)
    return [_save(lab.path("bad", "sub-01_desc-four_bold.nii.gz"), stacked)]


def directory_as_image(lab: Lab) -> list[Path]:
    folder = lab.path("bad", "folder_FLAIR.nii.gz")
    folder.mkdir(parents=True, exist_ok=True)
    return [folder, _images(lab)[1]]


def one_channel_for_two(lab: Lab) -> list[Path]:
    return _images(lab)[:1]


def swapped_channels(lab: Lab) -> list[Path]:
    return list(reversed(_images(lab)))


def swapped_nnunet_numbers(lab: Lab) -> list[Path]:
    flair, t1w = _images(lab)
    first, second = lab.path("nn", "case_0001.nii.gz"), lab.path("nn", "case_0000.nii.gz")
    first.parent.mkdir(exist_ok=True)
    shutil.copy(t1w, first)
    shutil.copy(flair, second)
    return [first, second]


# ---------------------------------------------------------------- cases: references


def _reference_case(
    make: Callable[[Lab], Path], expected: str, note: str | None = None
) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        reference = make(lab)
        run = _explain(lab, _images(lab), lab.path("out", make.__name__), "--reference", reference)
        outcome, line = judge(run, expected)
        if outcome == "handled" and note is not None:
            notes = [line for line in run.err.splitlines() if note in line]
            if len(notes) != 1:
                return "wrong exit", f"no one-line note saying {note!r}"
            return "handled", notes[0]
        return outcome, line

    return case


def _lesion_mask(lab: Lab) -> np.ndarray:
    path = lab.path("data/derivatives/manual/sub-01/anat/sub-01_desc-lesion_mask.nii.gz")
    return _array(path)


def labelled_reference(lab: Lab) -> Path:
    labels = _lesion_mask(lab).astype(np.uint8) * 5
    labels[0, 0, 0] = 2
    return _save(lab.path("bad", "labels_mask.nii.gz"), labels)


def float_reference(lab: Lab) -> Path:
    return _save(lab.path("bad", "prob_mask.nii.gz"), _lesion_mask(lab) * np.float32(0.7))


def negative_reference(lab: Lab) -> Path:
    return _save(lab.path("bad", "neg_mask.nii.gz"), -_lesion_mask(lab).astype(np.int16))


def empty_reference(lab: Lab) -> Path:
    return _save(lab.path("bad", "empty_mask.nii.gz"), np.zeros(SHAPE, np.uint8))


def reference_on_another_grid(lab: Lab) -> Path:
    return _save(lab.path("bad", "grid_mask.nii.gz"), np.zeros((20, 16, 16), np.uint8))


# ---------------------------------------------------------------- cases: crafted models


def _marker_case(model: Callable[[Lab, Path], str]) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        marker = lab.path(f"pwned_{model.__name__}")
        run = _explain(lab, _images(lab), lab.path("out", model.__name__), model=model(lab, marker))
        if marker.exists():
            return "code ran", f"{marker.name} was written"
        return judge(run, "refused")

    return case


def crafted_bundle(lab: Lab, marker: Path) -> str:
    bundle = lab.path("bundle")
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    code = f"$__import__('pathlib').Path({str(marker)!r}).write_text('x') and 2"
    network_def = {
        "_target_": "monai.networks.nets.BasicUNet",
        "spatial_dims": 3,
        "in_channels": code,
        "out_channels": 2,
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    (bundle / "models" / "model.pt").write_bytes(b"")
    return str(bundle)


def crafted_bundle_target_walk(lab: Lab, marker: Path) -> str:
    bundle = lab.path("bundle_walk")
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    network_def = {
        "_target_": "monai.networks.nets.unet.torch.serialization.os.system",
        "command": f"touch {marker}",
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    (bundle / "models" / "model.pt").write_bytes(b"")
    return str(bundle)


def crafted_nnunet_plans(lab: Lab, marker: Path) -> str:
    (lab.path("planted.py")).write_text(
        f"def build(*args, **kwargs):\n    open({str(marker)!r}, 'w').write('x')\n"
    )
    architecture = {"network_class_name": "planted.build", "arch_kwargs": {}}
    return _nnunet_folder(lab, "nnunet_crafted", architecture)


def crafted_nnunet_nonlin_walk(lab: Lab, marker: Path) -> str:
    arch_kwargs = {
        "n_stages": 1,
        "features_per_stage": [4],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]],
        "strides": [[1, 1, 1]],
        "n_conv_per_stage": [1],
        "n_conv_per_stage_decoder": [],
        "conv_bias": True,
        "norm_op": None,
        "dropout_op": None,
        "nonlin": "torch.nn.functional.torch.serialization.os.system",
        "nonlin_kwargs": {"command": f"touch {marker}"},
    }
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": arch_kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    return _nnunet_folder(lab, "nnunet_nonlin_walk", architecture)


def _nnunet_folder(lab: Lab, name: str, architecture: dict[str, object]) -> str:
    import torch

    folder = lab.path(name)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR", "1": "T1w"},
                "labels": {"background": 0, "lesion": 1},
                "file_ending": ".nii.gz",
                "numTraining": 1,
            }
        )
    )
    architecture = {"_kw_requires_import": [], **architecture}
    configuration = {
        "data_identifier": "x",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [16, 16, 16],
        "median_image_size_in_voxels": [26, 16, 16],
        "spacing": [2.0, 2.0, 2.0],
        "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
        "use_mask_for_norm": [False, False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {},
        "architecture": architecture,
        "batch_dice": False,
    }
    (folder / "plans.json").write_text(
        json.dumps(
            {
                "dataset_name": "Dataset001_X",
                "plans_name": "nnUNetPlans",
                "original_median_spacing_after_transp": [2.0, 2.0, 2.0],
                "original_median_shape_after_transp": [26, 16, 16],
                "image_reader_writer": "SimpleITKIO",
                "transpose_forward": [0, 1, 2],
                "transpose_backward": [0, 1, 2],
                "configurations": {"3d_fullres": configuration},
                "experiment_planner_used": "x",
                "label_manager": "LabelManager",
                "foreground_intensity_properties_per_channel": {},
            }
        )
    )
    torch.save(
        {"init_args": {"configuration": "3d_fullres"}, "network_weights": {}},
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return str(folder)


class _Planted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def crafted_pickle(lab: Lab, marker: Path) -> str:
    path = lab.path("pickled.pt")
    path.write_bytes(pickle.dumps({"state_dict": _Planted(str(marker))}))
    return f"torch.nn:Identity={path}"


def zip_bomb_model(lab: Lab, marker: Path) -> str:
    path = lab.path("bomb.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (64 << 20))  # 64 MB of zeros in ~64 kB
    return str(path)


def text_as_model(lab: Lab, marker: Path) -> str:
    path = lab.path("notes.pt")
    path.write_text("this is not a model\n")
    return str(path)


def missing_model(lab: Lab, marker: Path) -> str:
    return str(lab.path("no_such_model.pt"))


# ---------------------------------------------------------------- cases: outputs


def out_is_a_file(command: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        target = lab.path(f"file_out_{command}")
        target.write_text("precious\n")
        if command == "cohort":
            run = lab.run(
                "cohort", lab.path("data"), "--model", "linear.pt", "--out", target, *FAST
            )
        elif command == "segment":
            run = lab.run("segment", *_images(lab), "--model", "linear.pt", "--out", target)
        else:
            run = _explain(lab, _images(lab), target)
        if target.read_text() != "precious\n":
            return "data lost", f"{target.name} was changed"
        return judge(run, "refused")

    case.__name__ = f"out_is_a_file_{command}"
    return case


@contextlib.contextmanager
def _mounted(
    lab: Lab, name: str, options: str
) -> Iterator[tuple[Path, dict[str, str], str | None]]:
    """A tmpfs at ``name`` mounted with ``options`` (root), else the write-fault wrapper."""
    folder = lab.path(name)
    folder.mkdir(exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    try:
        if mounted:
            yield folder, {}, None
        else:
            code = errno.EROFS if "ro" in options.split(",") else errno.ENOSPC
            yield (
                folder,
                {"REDTEAM_FAIL_UNDER": str(folder), "REDTEAM_ERRNO": str(code)},
                (_FAULTY_WRITES),
            )
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


def read_only_out(lab: Lab) -> tuple[str, str]:
    with _mounted(lab, "readonly", "ro,size=1m") as (folder, env, wrapper):
        run = lab.run(
            "explain",
            *_images(lab),
            "--model",
            "linear.pt",
            "--out",
            folder / "out",
            *FAST,
            wrapper=wrapper,
            env=env,
        )
    return judge(run, "refused")


def full_disk(lab: Lab) -> tuple[str, str]:
    with _mounted(lab, "full", "size=48k") as (folder, env, wrapper):
        run = lab.run(
            "explain",
            *_images(lab),
            "--model",
            "linear.pt",
            "--out",
            folder / "out",
            *FAST,
            wrapper=wrapper,
            env=env,
        )
    return judge(run, "refused")


def symlinked_out(lab: Lab) -> tuple[str, str]:
    target = lab.path("real_out")
    target.mkdir(exist_ok=True)
    link = lab.path("link_out")
    with contextlib.suppress(FileExistsError):
        link.symlink_to(target, target_is_directory=True)
    outcome, line = judge(_explain(lab, _images(lab), link), "handled")
    if outcome == "handled" and _table(target) is None:
        return "data lost", "no table in the link's target"
    return outcome, line


def unicode_paths(lab: Lab) -> tuple[str, str]:
    folder = lab.path("dätä ünï", "sub-é1", "anat")
    folder.mkdir(parents=True, exist_ok=True)
    images = [folder / "sub-é1_FLAIR.nii.gz", folder / "sub-é1_T1w.nii.gz"]
    for source, target in zip(_images(lab), images, strict=True):
        shutil.copy(source, target)
    run = _explain(lab, images, lab.path("öut ☃"))
    outcome, line = judge(run, "handled")
    if outcome == "handled" and _table(lab.path("öut ☃")) is None:
        return "data lost", "no lesion table written"
    return outcome, line


def html_in_file_names(lab: Lab) -> tuple[str, str]:
    name = "sub-<img src=x onerror=alert(1)>"
    folder = lab.path("html", "anat")
    folder.mkdir(parents=True, exist_ok=True)
    images = [folder / f"{name}_FLAIR.nii.gz", folder / f"{name}_T1w.nii.gz"]
    for source, target in zip(_images(lab), images, strict=True):
        shutil.copy(source, target)
    out = lab.path("out", "html")
    outcome, line = judge(_explain(lab, images, out), "handled")
    if outcome != "handled":
        return outcome, line
    reports = sorted(out.glob("*.html"))
    if not reports:
        return "wrong exit", "no report written"
    if "<img src=x onerror" in reports[0].read_text(encoding="utf-8"):
        return "code ran", "the file name's HTML is in the report unescaped"
    return "handled", "escaped in the report"


def dotdot_subject(lab: Lab) -> tuple[str, str]:
    run = lab.run(
        "cohort",
        lab.path("data"),
        "--model",
        "linear.pt",
        "--out",
        lab.path("c_dot"),
        "--subjects",
        "../../etc",
        *FAST,
    )
    return judge(run, "refused")


def other_settings_without_overwrite(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "settings")
    failed = _finished_copy(lab, out)
    if failed is not None:
        return judge(failed, "handled")
    table = _table(out)
    run = _explain(lab, _images(lab), out, "--seed", "5")
    if _table(out) != table:
        return "data lost", "the first run's table changed"
    return judge(run, "refused")


def segment_output_exists(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "segment")
    first = lab.run("segment", *_images(lab), "--model", "linear.pt", "--out", out)
    if first.rc != 0:
        return judge(first, "handled")
    return judge(lab.run("segment", *_images(lab), "--model", "linear.pt", "--out", out), "refused")


def bad_threshold(lab: Lab) -> tuple[str, str]:
    return judge(
        _explain(lab, _images(lab), lab.path("out", "thr"), "--threshold", "1.5"), "refused"
    )


def zero_samples(lab: Lab) -> tuple[str, str]:
    run = lab.run(
        "explain",
        *_images(lab),
        "--model",
        "linear.pt",
        "--out",
        lab.path("out", "n0"),
        "--n-samples",
        "0",
    )
    return judge(run, "refused")


# ---------------------------------------------------------------- cases: inputs and earlier results


def _stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` with its inode and modification time (ns)."""
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _reference_copy(lab: Lab, folder: str) -> Path:
    """A copy of sub-01's reference mask in its own folder (a loss spoils no later case)."""
    name = "sub-01_desc-lesion_mask.nii.gz"
    target = lab.path(folder, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(lab.path("data", "derivatives", "manual", "sub-01", "anat", name), target)
    return target


def out_in_reference_folder(overwrite: bool) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        reference = _reference_copy(lab, f"reference_folder_{overwrite}")
        before = reference.read_bytes()
        flags = ["--reference", reference, *(["--overwrite"] if overwrite else [])]
        run = _explain(lab, _images(lab), reference.parent, *flags)
        if reference.read_bytes() != before:
            return "data lost", f"{reference.name} was replaced by the prediction"
        return judge(run, "refused")

    case.__name__ = "out_in_reference_folder" + ("_overwrite" if overwrite else "")
    return case


def linked_reference_in_out(lab: Lab) -> tuple[str, str]:
    reference = _reference_copy(lab, "linked_reference")
    out = lab.path("out", "linked_reference")
    out.mkdir(parents=True, exist_ok=True)
    os.link(reference, out / reference.name)
    before = reference.read_bytes()
    run = _explain(lab, _images(lab), out, "--reference", reference, "--overwrite")
    if reference.read_bytes() != before:
        return "data lost", "the reference, hard-linked into --out, was replaced"
    return judge(run, "refused")


def model_card_in_out(command: str) -> Callable[[Lab], tuple[str, str]]:
    """A model whose card has a name the command writes (run.json, cohort.json) in --out."""
    stem = "run" if command == "explain" else "cohort"

    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"card_{command}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(lab.path("linear.pt"), out / f"{stem}.pt")
        card = out / f"{stem}.json"
        shutil.copy(lab.path("linear.json"), card)
        before = card.read_bytes()
        if command == "explain":
            run = _explain(lab, _images(lab), out, "--overwrite", model=str(out / "run.pt"))
        else:
            model = out / "cohort.pt"
            run = lab.run(
                "cohort", lab.path("data"), "--model", model, "--out", out, *FAST, "--overwrite"
            )
        if card.read_bytes() != before:
            return "data lost", f"the model's card {card.name} was overwritten"
        return judge(run, "refused")

    case.__name__ = f"model_card_in_out_{command}"
    return case


def file_of_an_output_name(command: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"foreign_file_{command}")
        out.mkdir(parents=True, exist_ok=True)
        mine = out / ("lesions.tsv" if command == "cohort" else "sub-01_desc-lesion_mask.nii.gz")
        mine.write_bytes(b"someone else's file")
        if command == "cohort":
            run = lab.run("cohort", lab.path("data"), "--model", "linear.pt", "--out", out, *FAST)
        else:
            run = _explain(lab, _images(lab), out)
        if mine.read_bytes() != b"someone else's file":
            return "data lost", f"{mine.name} was overwritten without --overwrite"
        return judge(run, "refused")

    case.__name__ = f"file_of_an_output_name_{command}"
    return case


def overwrite_with_another_subject(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "two_subjects")
    first = _explain(lab, _images(lab), out)
    if first.rc != 0:
        return judge(first, "handled")
    outcome, line = judge(
        _explain(lab, _images(lab, participant="sub-02"), out, "--overwrite"), "handled"
    )
    left = sorted(p.name for p in out.rglob("sub-01*"))
    if outcome == "handled" and left:
        return "left over", f"{len(left)} file(s) of sub-01 beside sub-02's, e.g. {left[0]}"
    return outcome, line


def empty_out(lab: Lab) -> tuple[str, str]:
    before = set(lab.root.iterdir())
    run = lab.run("explain", *_images(lab), "--model", "linear.pt", "--out", "", *FAST)
    written = set(lab.root.iterdir()) - before
    if written:
        return "left over", f"{len(written)} file(s) written into the working folder"
    return judge(run, "refused")


def segment_name_outside(kind: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        name = "../../escaped" if kind == "relative" else str(lab.path("escaped_absolute"))
        out = lab.path("out", f"segment_name_{kind}")
        run = lab.run(
            "segment", *_images(lab), "--model", "linear.pt", "--out", out, "--name", name
        )
        escaped = sorted(lab.root.glob("escaped*"))
        if escaped:
            return "left over", f"{escaped[0].name} written outside --out"
        return judge(run, "refused")

    case.__name__ = f"segment_name_{kind}"
    return case


def finished_rerun(command: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"finished_rerun_{command}")
        head: list[str | Path] = (
            ["cohort", lab.path("data")] if command == "cohort" else ["explain", *_images(lab)]
        )
        arguments = [*head, "--model", "linear.pt", "--out", out, *FAST]
        first = lab.run(*arguments)
        if first.rc != 0:
            return judge(first, "handled")
        stamps = _stamps(out)
        outcome, line = judge(lab.run(*arguments), "handled")
        rewritten = [p.name for p, stamp in _stamps(out).items() if stamps.get(p) != stamp]
        if outcome == "handled" and rewritten:
            return "data lost", f"rewritten: {', '.join(rewritten[:3])}"
        return outcome, line

    case.__name__ = f"finished_rerun_{command}"
    return case


def cohort_overwrite_other_subjects(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "cohort_subjects")
    arguments = ["cohort", lab.path("data"), "--model", "linear.pt", "--out", out, *FAST]
    first = lab.run(*arguments, "--subjects", "sub-01")
    if first.rc != 0:
        return judge(first, "handled")
    outcome, line = judge(lab.run(*arguments, "--subjects", "sub-02", "--overwrite"), "handled")
    left = sorted(p.name for p in out.rglob("sub-01*"))
    if outcome == "handled" and left:
        return "left over", f"{len(left)} file(s) of sub-01 beside sub-02's, e.g. {left[0]}"
    return outcome, line


# ---------------------------------------------------------------- cases: state and concurrency


def _corrupt_manifest(kind: str, overwrite: bool) -> Callable[[Lab], tuple[str, str]]:
    contents = {"truncated": '{"run_key": "ab', "empty": "", "wrong type": "[1, 2, 3]"}

    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"corrupt_{kind.replace(' ', '_')}_{overwrite}")
        failed = _finished_copy(lab, out)
        if failed is not None:
            return judge(failed, "handled")
        (out / "run.json").write_text(contents[kind])
        flags = ["--overwrite"] if overwrite else []
        run = _explain(lab, _images(lab), out, *flags)
        return judge(run, "handled" if overwrite else "refused")

    case.__name__ = f"corrupt_run_json_{kind.replace(' ', '_')}" + (
        "_overwrite" if overwrite else ""
    )
    return case


def orphaned_temporary(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "orphan")
    worker = lab.start(
        "explain",
        *_images(lab, "many"),
        "--model",
        "linear.pt",
        "--out",
        out,
        "--n-samples",
        "400",
        "--n-true-negatives",
        "0",
    )
    deadline = time.monotonic() + TIMEOUT_S  # a loaded machine takes minutes to get there
    while time.monotonic() < deadline and not (out / "lesions").is_dir():
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    # what an atomic write of the killed worker leaves: instasal.folders.temporary_prefix + mkstemp
    orphan = out / f".sub-01_FLAIR_lesions.tsv.{host_tag()}-{worker.pid}.k1ll3d00.tmp.tsv"
    orphan.write_bytes(b"\0" * (1 << 20))
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    run = lab.run(
        "explain",
        *_images(lab, "many"),
        "--model",
        "linear.pt",
        "--out",
        out,
        "--n-samples",
        "400",
        "--n-true-negatives",
        "0",
    )
    outcome, line = judge(run, "handled")
    if outcome == "handled" and orphan.exists():
        return "left over", f"{orphan.name} (1 MB) still there after the next run"
    return outcome, line


def _records(out: Path) -> list[Path]:
    return sorted((out / "lesions").glob("*.json")) if (out / "lesions").is_dir() else []


def _finish(process: subprocess.Popen[str]) -> Run:
    out, err = process.communicate(timeout=TIMEOUT_S)
    return Run(process.returncode, out, err)


def kill_and_resume(lab: Lab) -> tuple[str, str]:
    args = ["--model", "linear.pt", "--n-samples", "120", "--n-true-negatives", "0"]
    images = _images(lab, "many")
    clean = lab.run("explain", *images, "--out", lab.path("out", "clean"), *args)
    if clean.rc != 0:
        return judge(clean, "resumed")
    out = lab.path("out", "killed")
    worker = lab.start("explain", *images, "--out", out, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _records(out):
        time.sleep(0.02)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    done = len(_records(out))
    run = lab.run("explain", *images, "--out", out, *args)
    outcome, line = judge(run, "resumed")
    if outcome != "handled":
        return outcome, line
    if _table(out) != _table(lab.path("out", "clean")):
        return "data lost", "the resumed table differs from an uninterrupted run's"
    return "handled", f"killed after {done} lesion record(s); resumed table identical"


def concurrent_explains(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "concurrent")
    args: list[str | Path] = [
        "--model",
        "linear.pt",
        "--out",
        out,
        "--n-true-negatives",
        "0",
    ]
    images = _images(lab, "many")
    first = lab.start("explain", *images, *args, "--n-samples", "60", "--seed", "1")
    second = lab.start("explain", *images, *args, "--n-samples", "60", "--seed", "2")
    runs = [_finish(p) for p in (first, second)]
    if any(r.traceback for r in runs):
        return "traceback", next(r for r in runs if r.traceback).err.strip().splitlines()[-1]
    if all(r.rc == 0 for r in runs):
        return "data lost", "both exited 0; the folder keeps one run's results only"
    if sorted(r.rc == 0 for r in runs) != [False, True]:
        return "wrong exit", f"exits {[r.rc for r in runs]}"
    refused = next(r for r in runs if r.rc != 0)
    return judge(refused, "refused")


def concurrent_cohort_workers(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "cohort_workers")
    args: list[str | Path] = [
        "cohort",
        lab.path("data"),
        "--model",
        "linear.pt",
        "--out",
        out,
        "--n-samples",
        "80",
        "--n-true-negatives",
        "0",
    ]
    workers = [lab.start(*args), lab.start(*args)]
    runs = [_finish(p) for p in workers]
    if any(r.traceback for r in runs):
        return "traceback", next(r for r in runs if r.traceback).err.strip().splitlines()[-1]
    explained = [r.out + r.err for r in runs]
    both_wrote = all("(0 reused)" in text and "2 subject(s) done" in text for text in explained)
    if both_wrote:
        return "clash", "both workers explained both subjects"
    if any(
        r.rc != 0 and not any(line.startswith("error:") for line in r.err.splitlines())
        for r in runs
    ):
        return "wrong exit", f"exits {[r.rc for r in runs]}"
    return "handled", f"exits {[r.rc for r in runs]}"


# ---------------------------------------------------------------- cases: patch size


def missing_patch_size_small(lab: Lab) -> tuple[str, str]:
    run = _explain(lab, _images(lab), lab.path("out", "nopatch"), model="nopatch.pt")
    outcome, line = judge(run, "handled")
    notes = [line for line in run.err.splitlines() if "states no patch size" in line]
    if outcome == "handled" and len(notes) != 1:
        return "wrong exit", "full context chosen without a note"
    return outcome, notes[0] if notes else line


def missing_patch_size_long(lab: Lab) -> tuple[str, str]:
    """A 3³-convolution network on a 48³ subject with a 20³ lesion: hours in full context."""
    shape = (48, 48, 48)
    flair = np.full(shape, 10.0, np.float32)
    flair[14:34, 14:34, 14:34] = 40.0
    folder = lab.path("big", "sub-01", "anat")
    images = [
        _save(folder / "sub-01_FLAIR.nii.gz", flair),
        _save(
            folder / "sub-01_T1w.nii.gz",
            np.random.default_rng(0).normal(10, 1, shape).astype(np.float32),
        ),
    ]
    card = {k: v for k, v in CARD.items() if k != "patch_size"} | {"threshold": 0.0001}
    model = _model(lab.root, "deep_nopatch", card, layers="deep")
    run = lab.run(
        "explain",
        *images,
        "--model",
        model,
        "--out",
        lab.path("out", "eta"),
        "--n-true-negatives",
        "0",
    )
    outcome, line = judge(run, "refused")
    if outcome == "handled" and "--context full" not in line:
        return "wrong exit", f"refused without the choice: {line}"
    return outcome, line


# ---------------------------------------------------------------- cases: models under the defaults


def _note_case(run: Run, note: str) -> tuple[str, str]:
    """``handled`` when ``run`` exited 0 with exactly one ``note:`` line saying ``note``."""
    outcome, line = judge(run, "handled")
    if outcome != "handled":
        return outcome, line
    notes = [line for line in run.text.splitlines() if line.startswith("note:") and note in line]
    if len(notes) != 1:
        return "wrong exit", f"no one-line note saying {note!r}"
    return "handled", notes[0]


def _refused_saying(run: Run, words: str) -> tuple[str, str]:
    """``handled`` when ``run`` was refused in one error line holding ``words``."""
    outcome, line = judge(run, "refused")
    if outcome == "handled" and words not in line:
        return "wrong exit", f"refused without saying {words!r}: {line}"
    return outcome, line


def torchscript_default_gradcam(lab: Lab) -> tuple[str, str]:
    out = lab.path("out", "torchscript_gradcam")
    run = lab.run(
        "explain", *_images(lab), "--model", "linear.pt", "--out", out, "--n-samples", "2"
    )
    return _note_case(run, "Grad-CAM++ skipped")


def _nan_model(lab: Lab) -> Path:
    """A traced network whose logits are all NaN, with the card of ``linear.pt``."""
    import torch
    from torch import nn

    class NanLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * float("nan")

    path = lab.path("nan_logits.pt")
    if not path.exists():
        traced = torch.jit.trace(NanLogits().eval(), torch.zeros(1, 2, *SHAPE))
        torch.jit.save(traced, str(path))
        path.with_suffix(".json").write_text(json.dumps(CARD))
    return path


def nan_output(command: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"nan_{command}")
        model = _nan_model(lab)
        flags = ["--n-samples", "2"] if command == "explain" else []
        run = lab.run(command, *_images(lab), "--model", model, "--out", out, *flags)
        return _refused_saying(run, "NaN")

    case.__name__ = f"nan_output_{command}"
    return case


def t2_pd_channels(ignore: bool) -> Callable[[Lab], tuple[str, str]]:
    """A model taking T2w and PDw, with files named so (swapped and --ignore-channel-names)."""

    def case(lab: Lab) -> tuple[str, str]:
        files = [lab.path("t2pd", "sub-01_T2w.nii.gz"), lab.path("t2pd", "sub-01_PDw.nii.gz")]
        files[0].parent.mkdir(exist_ok=True)
        for source, target in zip(_images(lab), files, strict=True):
            shutil.copy(source, target)
        model = _model(lab.root, "t2pd", CARD | {"channel_names": ["T2w", "PDw"]})
        # swapped, the noise of the T1w-like channel makes many one-voxel lesions: explain two
        swapped = (files[::-1], ["--ignore-channel-names", "--max-lesions", "2"])
        images, flags = swapped if ignore else (files, [])
        out = lab.path("out", f"t2pd_{ignore}")
        return judge(_explain(lab, images, out, *flags, model=str(model)), "handled")

    case.__name__ = "t2_pd_channels" + ("_ignored_names" if ignore else "")
    return case


# ---------------------------------------------------------------- cases: odd files and values


def _rgb(data: np.ndarray) -> np.ndarray:
    colours = np.zeros(data.shape, dtype=[("R", np.uint8), ("G", np.uint8), ("B", np.uint8)])
    colours["R"] = np.clip(data * 5, 0, 255).astype(np.uint8)
    return colours


def _with_header(name: str, **fields: object) -> Callable[[Lab], list[Path]]:
    """Both channels written uncompressed, then header ``fields`` overwritten unchecked (as a
    broken converter writes them; both alike, so that the channels still agree)."""

    def make(lab: Lab) -> list[Path]:
        written = []
        for channel in _images(lab):
            raw = bytearray(nib.Nifti1Image(_array(channel), AFFINE).to_bytes())
            header = nib.Nifti1Header(binaryblock=bytes(raw[:348]))
            for key, value in fields.items():
                header[key] = value
            raw[:348] = header.binaryblock
            bad = lab.path("bad", name, channel.name.removesuffix(".gz"))
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_bytes(bytes(raw))
            written.append(bad)
        return written

    make.__name__ = name
    return make


def nan_sform_beside_a_qform(lab: Lab) -> tuple[str, str]:
    images = _with_header("nan_sform_qform", srow_x=[np.nan, 0, 0, 0], qform_code=1)(lab)
    run = _explain(lab, images, lab.path("out", "nan_sform_qform"))
    outcome, line = judge(run, "handled")
    notes = [line for line in run.text.splitlines() if "the qform is used instead" in line]
    if outcome == "handled" and not all(
        any(note.startswith(f"note: {image}:") for note in notes) for image in images
    ):
        return "wrong exit", f"not one note per file saying the qform is used: {notes}"
    return outcome, notes[0] if outcome == "handled" else line


def slab_image(lab: Lab) -> tuple[str, str]:
    """Both channels cut to the one axial slice through the first lesion (26×16×1)."""
    images = [_save(lab.path("slab", p.name), _array(p)[:, :, 4:5]) for p in _images(lab)]
    return judge(_explain(lab, images, lab.path("out", "slab")), "handled")


def seed_given(seed: str, command: str) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        out = lab.path("out", f"seed_{command}")
        inputs = _images(lab) if command == "explain" else [lab.path("data")]
        run = lab.run(command, *inputs, "--model", "linear.pt", "--out", out, *FAST, "--seed", seed)
        return _refused_saying(run, "seed")

    case.__name__ = f"seed_{command}"
    return case


def regions_holding(name: str, values: list[float]) -> Callable[[Lab], tuple[str, str]]:
    def case(lab: Lab) -> tuple[str, str]:
        labels = np.resize(np.array(values, np.float32), SHAPE)
        regions = _save(lab.path("bad", f"{name}_dseg.nii.gz"), labels)
        run = _explain(lab, _images(lab), lab.path("out", name), "--regions", regions)
        return _refused_saying(run, "not labels")

    case.__name__ = name
    return case


def _raylet_under(pid: int) -> int | None:
    """The process id of the raylet a process started (a child of it), if one runs."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            name = (entry / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and name == "raylet":
            return int(entry.name)
    return None


def ray_raylet_dies(lab: Lab) -> tuple[str, str]:
    """A cohort on Ray whose raylet (the run's own) is killed once a first subject is done: the
    subjects Ray lost must fail in one line each, without a traceback."""
    if importlib.util.find_spec("ray") is None:
        return "handled", "Ray is not installed: nothing to kill"
    data = lab.path("ray_data")
    for k in range(4):
        _subject(data, f"sub-{k + 1:02d}", seed=20 + k)
    out = lab.path("out", "ray_raylet")
    process = lab.start("cohort", data, "--model", "linear.pt", "--out", out, "--executor", "ray")
    raylet, deadline = None, time.monotonic() + TIMEOUT_S
    while raylet is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if (out / "status").is_dir() and any((out / "status").glob("*.json")):
            raylet = _raylet_under(process.pid)
    if raylet is not None:
        os.kill(raylet, signal.SIGKILL)
    run = _finish(process)
    if run.traceback:
        return "traceback", run.err.strip().splitlines()[-1]
    lost = [line for line in run.text.splitlines() if "Ray lost the task" in line]
    if raylet is None or not lost or any(not line.startswith("failed") for line in lost):
        return "wrong exit", f"exit {run.rc}, raylet {raylet}: {run.error_line()}"
    return "handled", f"{len(lost)} subject(s) failed: {lost[0]}"


_UNET_16 = {
    "spatial_dims": 3,
    "in_channels": 2,
    "out_channels": 2,
    "channels": [2, 2, 2, 2, 2],
    "strides": [2, 2, 2, 2],
    "num_res_units": 0,
}
"""A MONAI U-Net pooling four times: every input side must be a multiple of 16."""


def sixteen_bundle(lab: Lab) -> tuple[str, str]:
    """A bundle of that U-Net whose config states no size; the subject is 26×16×16."""
    import torch
    from monai.networks.nets import UNet

    bundle = lab.path("bundle16")
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    image = {"num_channels": 2, "channel_def": {"0": "FLAIR", "1": "T1w"}}
    metadata = {"version": "0.1", "network_data_format": {"inputs": {"image": image}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    network_def = {"_target_": "UNet", **_UNET_16}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.manual_seed(0)
    torch.save(UNet(**_UNET_16).state_dict(), bundle / "models" / "model.pt")
    return judge(
        _explain(lab, _images(lab), lab.path("out", "bundle16"), model=str(bundle)), "handled"
    )


def sixteen_torchscript(lab: Lab) -> tuple[str, str]:
    """That U-Net traced at 32³, with a card stating no size divisibility."""
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    traced = torch.jit.trace(UNet(**_UNET_16).eval(), torch.zeros(1, 2, 32, 32, 32))
    path = lab.path("unet16.pt")
    torch.jit.save(traced, str(path))
    path.with_suffix(".json").write_text(json.dumps({"channel_names": ["FLAIR", "T1w"]}))
    return judge(_explain(lab, _images(lab), lab.path("out", "unet16"), model=str(path)), "handled")


def true_negatives_without_room(lab: Lab) -> tuple[str, str]:
    """TN asked for in a tissue mask that is only the lesion's 2 mm rim: none fit."""
    from scipy import ndimage

    lesion = _lesion_mask(lab) > 0
    rim = _save(
        lab.path("bad", "rim_mask.nii.gz"),
        (ndimage.binary_dilation(lesion) & ~lesion).astype(np.uint8),
    )
    reference = lab.path("data/derivatives/manual/sub-01/anat/sub-01_desc-lesion_mask.nii.gz")
    out = lab.path("out", "tn_no_room")
    run = lab.run(
        "explain",
        *_images(lab),
        "--model",
        "linear.pt",
        "--out",
        out,
        "--n-samples",
        "2",
        "--reference",
        reference,
        "--tissue-mask",
        rim,
        "--n-true-negatives",
        "3",
    )
    return _note_case(run, "TN domains asked for")


def many_one_voxel_lesions(lab: Lab) -> tuple[str, str]:
    """200 one-voxel lesions: the report draws 50 panels and says so; every row in the table."""
    flair, t1w = (_array(path) for path in _images(lab))
    flair = flair.copy()
    voxels = [(1 + 2 * (k % 12), 1 + 2 * (k // 12 % 7), 1 + 2 * (k // 84)) for k in range(200)]
    for voxel in voxels:
        flair[voxel] = 40.0
    images = [
        _save(lab.path("speckled", "sub-01_FLAIR.nii.gz"), flair),
        _save(lab.path("speckled", "sub-01_T1w.nii.gz"), t1w),
    ]
    out = lab.path("out", "speckled")
    outcome, line = judge(_explain(lab, images, out), "handled")
    if outcome != "handled":
        return outcome, line
    rows = (_table(out) or "").count("\n") - 1
    report = (out / "report.html").read_text(encoding="utf-8")
    if "Panels capped" not in report or report.count('class="lesion-section"') != 50:
        return "wrong exit", f"{rows} rows; the report draws every panel or says nothing"
    return "handled", f"{rows} rows in the table, 50 panels in the report, the rest said"


# ---------------------------------------------------------------- the list


def _refusal(
    make: Callable[[Lab], list[Path]],
) -> tuple[str, str, Callable[[Lab], tuple[str, str]]]:
    return make.__name__.replace("_", " "), "refused", _bad_image_case(make)


CASES: list[tuple[str, str, Callable[[Lab], tuple[str, str]]]] = [
    # issue 13's cases
    _refusal(garbage_nifti),
    _refusal(huge_header),
    _refusal(moderate_header),
    ("crafted bundle ($ code)", "refused", _marker_case(crafted_bundle)),
    ("crafted nnU-Net plans", "refused", _marker_case(crafted_nnunet_plans)),
    ("bundle _target_ walking to os.system", "refused", _marker_case(crafted_bundle_target_walk)),
    ("nnU-Net nonlin walking to os.system", "refused", _marker_case(crafted_nnunet_nonlin_walk)),
    ("crafted pickle", "refused", _marker_case(crafted_pickle)),
    ("explain --out is a file", "refused", out_is_a_file("explain")),
    ("segment --out is a file", "refused", out_is_a_file("segment")),
    ("cohort --out is a file", "refused", out_is_a_file("cohort")),
    ("read-only out", "refused", read_only_out),
    ("full disk", "refused", full_disk),
    ("two concurrent explains, one folder", "refused", concurrent_explains),
    ("two cohort workers", "handled", concurrent_cohort_workers),
    *[
        (
            f"corrupt run.json: {kind}" + (" --overwrite" if ow else ""),
            "handled" if ow else "refused",
            _corrupt_manifest(kind, ow),
        )
        for kind in ("truncated", "empty", "wrong type")
        for ow in (False, True)
    ],
    ("orphaned temporary after kill -9", "handled", orphaned_temporary),
    ("kill -9 then resume", "resumed", kill_and_resume),
    ("missing patch size, long run (ETA)", "refused", missing_patch_size_long),
    ("missing patch size, small run", "handled", missing_patch_size_small),
    _refusal(swapped_channels),
    (
        "non-binary reference (labels 0..5)",
        "handled",
        _reference_case(labelled_reference, "handled", "is not binary"),
    ),
    ("HTML in file names", "handled", html_in_file_names),
    ("../ subject ids", "refused", dotdot_subject),
    # ten and more of our own
    _refusal(truncated_gzip),
    ("NaN voxels", "refused", _bad_image_case(_volume_case("nan", _with_nan))),
    ("Inf voxels", "refused", _bad_image_case(_volume_case("inf", _with_inf))),
    _refusal(four_d_image),
    (
        "channels on different grids",
        "refused",
        _bad_image_case(_volume_case("shape", lambda d: d[:-2])),
    ),
    (
        "channels with different affines",
        "refused",
        _bad_image_case(_volume_case("affine", lambda d: d, np.diag([2.0, 2.0, 2.5, 1.0]))),
    ),
    ("zero-size axis", "refused", _bad_image_case(_volume_case("empty", lambda d: d[:, :, :0]))),
    (
        "constant channel",
        "refused",
        _bad_image_case(_volume_case("constant", lambda d: np.ones_like(d))),
    ),
    _refusal(int64_overflow_header),
    _refusal(directory_as_image),
    _refusal(one_channel_for_two),
    _refusal(swapped_nnunet_numbers),
    ("zip bomb as model", "refused", _marker_case(zip_bomb_model)),
    ("text file as model", "refused", _marker_case(text_as_model)),
    ("missing model file", "refused", _marker_case(missing_model)),
    (
        "float reference (0/0.7)",
        "handled",
        _reference_case(float_reference, "handled", "is not binary"),
    ),
    (
        "negative reference",
        "handled",
        _reference_case(negative_reference, "handled", "is not binary"),
    ),
    ("empty reference", "handled", _reference_case(empty_reference, "handled")),
    ("reference on another grid", "refused", _reference_case(reference_on_another_grid, "refused")),
    ("symlinked out folder", "handled", symlinked_out),
    ("unicode paths", "handled", unicode_paths),
    ("other settings without --overwrite", "refused", other_settings_without_overwrite),
    ("segment output exists", "refused", segment_output_exists),
    ("threshold out of range", "refused", bad_threshold),
    ("--n-samples 0", "refused", zero_samples),
    # issue 24's cases of inputs and earlier results lost
    ("explain --out the reference's folder", "refused", out_in_reference_folder(False)),
    ("... the same with --overwrite", "refused", out_in_reference_folder(True)),
    ("reference hard-linked into --out", "refused", linked_reference_in_out),
    ("model card run.json in explain's --out", "refused", model_card_in_out("explain")),
    ("model card cohort.json in cohort's --out", "refused", model_card_in_out("cohort")),
    ("a file of an output's name in --out", "refused", file_of_an_output_name("explain")),
    ("a lone lesions.tsv in cohort's --out", "refused", file_of_an_output_name("cohort")),
    ("--overwrite with another subject", "handled", overwrite_with_another_subject),
    ('explain --out ""', "refused", empty_out),
    ("segment --name ../../x", "refused", segment_name_outside("relative")),
    ("segment --name /absolute/x", "refused", segment_name_outside("absolute")),
    ("rerun of a finished explain", "handled", finished_rerun("explain")),
    ("rerun of a finished cohort", "handled", finished_rerun("cohort")),
    ("cohort --overwrite, other subjects", "handled", cohort_overwrite_other_subjects),
    # issue 24's model cases
    ("TorchScript model, default Grad-CAM++", "handled", torchscript_default_gradcam),
    ("model outputs NaN: explain", "refused", nan_output("explain")),
    ("model outputs NaN: segment", "refused", nan_output("segment")),
    ("T2w/PDw model, _T2w/_PDw files", "handled", t2_pd_channels(ignore=False)),
    ("T2w/PDw swapped, --ignore-channel-names", "handled", t2_pd_channels(ignore=True)),
    ("MONAI bundle needing 16, 26×16×16 image", "handled", sixteen_bundle),
    ("TorchScript U-Net needing 16, no card size", "handled", sixteen_torchscript),
    ("TN asked for where none fit", "handled", true_negatives_without_room),
    ("200 one-voxel lesions: report panels", "handled", many_one_voxel_lesions),
    # issue 24's odd files and values
    ("RGB24 NIfTI", "refused", _bad_image_case(_volume_case("rgb", _rgb))),
    (
        "complex64 NIfTI",
        "refused",
        _bad_image_case(_volume_case("complex", lambda d: (d + 1j * d).astype(np.complex64))),
    ),
    ("sform NaN beside a qform", "handled", nan_sform_beside_a_qform),
    (
        "sform NaN, no qform",
        "refused",
        _bad_image_case(_with_header("nan_sform", srow_x=[np.nan, 0, 0, 0])),
    ),
    (
        "singular sform, no qform",
        "refused",
        _bad_image_case(_with_header("singular_sform", srow_z=[0, 2.0, 0, 0])),
    ),
    ("one-voxel-thick slab", "handled", slab_image),
    ("explain --seed 2**70", "refused", seed_given(str(2**70), "explain")),
    ("cohort --seed -1", "refused", seed_given("-1", "cohort")),
    ("--regions holding 1.5", "refused", regions_holding("fraction_regions", [0, 1, 1.5])),
    ("--regions holding -2.7", "refused", regions_holding("negative_regions", [0, 2, -2.7])),
    ("raylet killed mid-cohort", "handled", ray_raylet_dies),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Build the inputs here and keep them.")
    parser.add_argument("--only", help="Run only cases whose name contains this.")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="instasal-redteam-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lab = build(root)
    results: list[Outcome] = []
    for name, expected, case in CASES:
        if args.only and args.only not in name:
            continue
        clock = time.perf_counter()
        try:
            outcome, detail = case(lab)
        except subprocess.TimeoutExpired:
            outcome, detail = "wrong exit", f"no exit within {TIMEOUT_S} s"
        except Exception as error:  # the harness itself failed to build or judge the case
            outcome, detail = "harness error", f"{type(error).__name__}: {error}"
        results.append(Outcome(name, expected, outcome, detail))
        seconds = time.perf_counter() - clock
        print(
            f"{name:<40} {expected:<8} {outcome:<11} {seconds:5.1f} s  {detail[:150]}", flush=True
        )
    counts = {
        kind: sum(r.outcome == kind for r in results)
        for kind in (
            "handled",
            "traceback",
            "data lost",
            "wrong exit",
            "code ran",
            "clash",
            "left over",
        )
    }
    print(
        f"\ncases tried {len(results)}, handled {counts['handled']}, tracebacks "
        f"{counts['traceback']}, data lost {counts['data lost']}, wrong exit "
        f"{counts['wrong exit']}, code ran {counts['code ran']}, clash {counts['clash']}, "
        f"left over {counts['left over']} ({time.perf_counter() - started:.0f} s)"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if counts["handled"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
