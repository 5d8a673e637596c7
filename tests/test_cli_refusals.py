"""Every command refuses bad inputs and options in one line, before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import sys\n"
    "from instasal.cli import main\n"
    "sys.argv = ['instasal', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as stop:\n"
    "    print('exit', stop.code, 'torch' in sys.modules)\n"
)


def _refusal(args: list[str]) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip(), done.stderr


@pytest.fixture
def files(tmp_path):
    """An existing (empty) image file and dataset folder: only their existence is checked."""
    image = tmp_path / "sub-01_FLAIR.nii.gz"
    image.write_bytes(b"")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    return {"image": str(image), "dataset": str(dataset), "missing": str(tmp_path / "nothing")}


# The same words as load_model's refusal: the command line asks model_source, as load_model does.
UNKNOWN_MODEL = "unknown model 'nope'; built-in models are unet, nnunet, swinunetr; or give a"

CASES = {
    "segment missing image": (
        ["segment", "{missing}", "--out", "{dataset}/o"],
        "nothing: file not found",
    ),
    "segment unknown model": (
        ["segment", "{image}", "--out", "{dataset}/o", "--model", "nope"],
        UNKNOWN_MODEL,
    ),
    "segment missing model file": (
        ["segment", "{image}", "--out", "{dataset}/o", "--model", "{missing}.pt"],
        "nothing.pt: model file or folder not found",
    ),
    "segment model folder of neither kind": (
        ["segment", "{image}", "--out", "{dataset}/o", "--model", "{dataset}"],
        "dataset: folder is neither a MONAI bundle (configs/, models/) nor an nnU-Net v2",
    ),
    "explain factory weights missing": (
        ["explain", "{image}", "--out", "{dataset}/o", "-m", "os.path:join={missing}.pt"],
        "nothing.pt: checkpoint not found",
    ),
    "segment threshold": (
        ["segment", "{image}", "--out", "{dataset}/o", "--threshold", "1.5"],
        "--threshold must be in (0, 1), got 1.5",
    ),
    "explain unknown model under --threads": (
        ["--threads", "1", "explain", "{image}", "--out", "{dataset}/o", "-m", "nope"],
        UNKNOWN_MODEL,
    ),
    "explain noise level": (
        ["explain", "{image}", "--out", "{dataset}/o", "--noise-level", "1.5"],
        "noise_level must be in [0, 1), got 1.5",
    ),
    "cohort missing dataset": (["cohort", "{missing}", "--out", "{dataset}/o"], "file not found"),
    "cohort executor": (
        ["cohort", "{dataset}", "--out", "{dataset}/o", "--executor", "dask"],
        "'dask' is not one of 'local', 'ray'",
    ),
    "cohort unknown model": (
        ["cohort", "{dataset}", "--out", "{dataset}/o", "--model", "nope"],
        UNKNOWN_MODEL,
    ),
    "evaluate without --out": (["evaluate", "{dataset}"], "Missing option '--out'"),
    "evaluate unknown model": (
        ["evaluate", "{dataset}", "--out", "{dataset}/o", "-m", "unet", "-m", "nope"],
        UNKNOWN_MODEL,
    ),
    "evaluate overlap": (
        ["evaluate", "{dataset}", "--out", "{dataset}/o", "--overlap", "1"],
        "--overlap must be in [0, 1), got 1.0",
    ),
    "experiment name": (
        ["experiment", "ablation", "{dataset}", "--out", "{dataset}/o"],
        "No such command 'ablation'",
    ),
    "experiment method": (
        ["experiment", "uncertainty", "{dataset}", "--out", "{dataset}/o", "--method", "vote"],
        "--method must be one of tta, mc_dropout, ensemble, got 'vote'",
    ),
    "experiment ensemble member": (
        ["experiment", "uncertainty", "{dataset}", "-o", "{dataset}/o", "--models", "nope"],
        UNKNOWN_MODEL,
    ),
    "experiment compared with itself": (
        ["experiment", "patch-vs-full", "{dataset}", "-o", "{dataset}/o", "--context", "full"],
        "--context is the one compared with full: patch or deployed",
    ),
    "experiment context": (
        ["experiment", "relocation", "{dataset}", "-o", "{dataset}/o", "--context", "window"],
        "'window' is not one of",
    ),
    "experiment missing dataset": (
        ["experiment", "context", "{missing}", "--out", "{dataset}/o"],
        "nothing: file not found",
    ),
    "analyse without a lesion table": (
        ["analyse", "{dataset}"],
        "lesions.tsv: lesion table not found",
    ),
    "train architecture": (
        ["train", "{dataset}", "--val", "{dataset}", "-o", "{dataset}/o", "-a", "resnet"],
        "--architecture must be one of unet, nnunet, swinunetr, got 'resnet'",
    ),
    "train missing cohort": (
        ["train", "{missing}", "--val", "{dataset}", "--out", "{dataset}/o"],
        "nothing: file not found",
    ),
    "train patch range": (
        ["train", "{dataset}", "--val", "{dataset}", "--out", "{dataset}/o", "--patch", "0"],
        "Input should be greater than or equal to 1",
    ),
    "phantom subjects range": (
        ["phantom", "{dataset}/c", "--subjects", "0"],
        "Input should be greater than or equal to 1",
    ),
    # issue 24: an empty output path would write into the working folder without a word, and a
    # --name with folders in it outside --out
    **{
        f"{command[0]} {option} empty": (command, f"{option}': empty path; give a folder")
        for command, option in [
            (["explain", "{image}", "--out", ""], "-o"),
            (["segment", "{image}", "--out", ""], "-o"),
            (["cohort", "{dataset}", "--out", ""], "-o"),
            (["evaluate", "{dataset}", "--out", ""], "-o"),
            (["experiment", "context", "{dataset}", "--out", ""], "-o"),
            (["train", "{dataset}", "--val", "{dataset}", "--out", ""], "-o"),
            (
                ["train", "{dataset}", "--val", "{dataset}", "-o", "{dataset}/o", "--export", ""],
                "--export",
            ),
            (["demo", "--out", ""], "-o"),
            (["phantom", ""], "out"),
            (["analyse", ""], "cohort_out"),
        ]
    },
    "segment name with a folder": (
        ["segment", "{image}", "--out", "{dataset}/o", "--name", "../../x"],
        "--name must be a plain file name, without a folder, got '../../x'",
    ),
    "segment absolute name": (
        ["segment", "{image}", "--out", "{dataset}/o", "--name", "/tmp/x"],
        "--name must be a plain file name, without a folder, got '/tmp/x'",
    ),
    "train export name with a folder": (
        ["train", "{dataset}", "--val", "{dataset}", "-o", "{dataset}/o", "--name", "../x"],
        "--name must be a plain file name, without a folder, got '../x'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_command_refuses_in_one_line_without_importing_torch(files, case):
    args, message = CASES[case]
    stdout, stderr = _refusal([arg.format(**files) for arg in args])
    assert stdout == "exit 2 False"
    assert message in stderr
    assert "Traceback" not in stderr


def test_global_threads_reach_torch_when_it_is_imported_later():
    """``--threads`` before torch is imported: torch's own thread count reports it."""
    probe = (
        "import sys\n"
        "from instasal.cli._app import limit_torch_threads\n"
        "limit_torch_threads(1)\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "1", done.stderr


def test_train_keeps_the_deprecated_threads_option_for_recorded_commands(files):
    stdout, stderr = _refusal(
        ["train", files["missing"], "--val", files["dataset"], "-o", "o", "--threads", "1"]
    )
    assert stdout == "exit 2 False"
    assert "nothing: file not found" in stderr
    listed = [line.lstrip("│ ") for line in _help("train").splitlines()]
    assert not any(line.startswith("--threads") for line in listed)


def _help(command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "instasal.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.stdout


def test_analyse_and_explain_share_the_regions_option():
    assert "--regions " in _help("analyse")
    assert "--regions-from" not in _help("analyse")
    assert "--regions " in _help("explain")


def test_each_experiment_takes_only_its_own_options(files):
    def options(name: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-m", "instasal.cli", "experiment", name, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        return {word for word in done.stdout.split() if word.startswith("--")}

    common = {"--out", "--model", "--overwrite", "--trust-model-code", "--ignore-channel-names"}
    assert options("context") - common == {
        "--max-lesions",
        "--band",
        "--seed",
        "--context",
        "--no-overwrite",
        "--help",
    }
    assert options("relocation") - common == {
        "--max-lesions",
        "--seed",
        "--context",
        "--no-overwrite",
        "--help",
    }
    # every experiment runs in a context, named as explain names it
    assert all("--context" in options(name) for name in ("patch-vs-full", "uncertainty"))
    assert "--band" not in options("uncertainty") and "--method" in options("uncertainty")
    stdout, stderr = _refusal(
        ["experiment", "relocation", files["dataset"], "-o", "o", "--method", "tta"]
    )
    assert stdout == "exit 2 False" and "No such option: --method" in stderr
