"""Instance SmoothGrad speed: the authors' procedure against our engines and contexts (issue 5).

One model (a MONAI UNet with random weights, or with ``--model`` any model instasal loads: a
built-in name, a TorchScript file, an nnU-Net v2 folder), one input and one lesion, measured in
one run:

- ``authors``: the authors' procedure — full-volume forward pass, one ``torch.autograd.grad`` per
  lesion voxel (parameters left requiring gradients, as in their scripts);
- ``naive/full``: our reference loop (SPEC §2) on the whole volume;
- ``auto/full``: our fastest exact engine alone, same context as the authors;
- ``naive/patch``, ``batched/patch``, ``auto/patch``: the engines on one patch around the lesion
  (SPEC §2 Context), with the patch-vs-full agreement of the maps beside them;
- ``auto/full/1``, ``auto/patch/1``: the same with one noise draw per forward pass, beside the
  default that forwards several draws together and pulls their rows in the same backward calls;
- ``auto/patch/channels_last``: the patch with the differentiated input stored channels-last;
- ``auto/deployed``: the deployed context (the sliding-window prediction's own logit: every
  window holding a lesion voxel, blended), with its cost over the patch context's;
- on CUDA also ``floor``: a bare batched VJP of the same rows in the same patch (one call, no
  aggregation, no noise), and our fraction of it.

Each measurement is ``--draws`` noise draws of ``--rows`` Jacobian rows each; s/row includes the
forward passes, amortised over the rows. The authors' procedure and ``auto/full`` are measured
``--repeats`` times, alternately, and their ratio reported as a median with its range.
Each procedure runs in its own child process; peak memory is that
process's peak resident-set growth during the measurement on the CPU (``ru_maxrss``),
``torch.cuda.max_memory_allocated`` on CUDA.
``auto`` measures the engines once per model, input size and device and caches the choice; that
one-off measurement runs (and is reported) before ``auto`` is timed. Not a timed test.

Usage: ``python benchmarks/saliency.py [--quick] [--device cpu|cuda] [--rows R] [--draws D]
[--repeats K] [--width small|authors] [--threads T] [--model NAME_OR_PATH]``.
The last line is ``speedup_vs_authors: <X>x`` (authors' s/row over ``auto/patch`` s/row).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

PAPER = {"volume": (192, 240, 256), "patch": 96, "rows": 8, "draws": 2}
QUICK = {"volume": (48, 56, 48), "patch": 24, "rows": 13, "draws": 4}
# The authors' five-level U-Net needs sizes divisible by 16.
QUICK_AUTHORS = {"volume": (48, 64, 48), "patch": 32, "rows": 13, "draws": 4}
WIDTHS = {"small": (16, 32, 64, 128), "authors": (32, 64, 128, 256, 512)}


@dataclass(frozen=True)
class Setting:
    volume: tuple[int, int, int]
    patch: int
    rows: int
    device: str
    threads: int
    norm: str
    draws: int = 1
    width: str = "small"
    seed: int = 0
    model: str | None = None


@dataclass(frozen=True)
class Measurement:
    name: str
    seconds: float
    rows: int
    peak_bytes: int
    saliency_map: torch.Tensor | None
    note: str = ""

    draws: int = 1

    @property
    def seconds_per_row(self) -> float:
        return self.seconds / (self.rows * self.draws)


def build(setting: Setting) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model, a smooth two-channel input and a compact lesion of ``rows`` voxels."""
    from monai.networks.nets import UNet

    torch.manual_seed(setting.seed)
    if setting.model is not None:
        from instasal.models import load_model

        model = load_model(setting.model).to(setting.device)
    else:
        channels = WIDTHS[setting.width]
        strides = (2,) * (len(channels) - 1)
        model = UNet(
            3, 2, 2, channels=channels, strides=strides, num_res_units=2, norm=setting.norm
        )
        model = model.to(setting.device)
    generator = torch.Generator().manual_seed(setting.seed)
    noise = torch.randn(1, 2, *setting.volume, generator=generator)
    x = torch.nn.functional.avg_pool3d(noise, 5, stride=1, padding=2)[0]
    centre = [round(0.4 * s) for s in setting.volume]
    axes = [(torch.arange(n) - c).float() ** 2 for n, c in zip(setting.volume, centre, strict=True)]
    distance = (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]).reshape(
        -1
    )
    domain = torch.zeros(distance.numel(), dtype=torch.bool)
    domain[torch.argsort(distance, stable=True)[: setting.rows]] = True  # the nearest voxels
    x[0][domain.reshape(setting.volume)] += 3.0  # hyperintense in "FLAIR"
    return model, x, domain.reshape(setting.volume)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _authors(
    model: torch.nn.Module, x: torch.Tensor, domain: torch.Tensor, draws: int
) -> torch.Tensor:
    from instasal.saliency.noise import noisy_inputs

    model.eval()
    device = next(model.parameters()).device
    total = None
    for noisy in noisy_inputs(
        x, n_samples=draws, noise_level=0.05, noise_range="per_channel", seed=0
    ):
        leaf = noisy.to(device).unsqueeze(0).requires_grad_(True)
        logits = model(leaf)[0, 1]
        best = None
        for v in torch.nonzero(domain.reshape(-1)).reshape(-1).tolist():
            (row,) = torch.autograd.grad(logits.reshape(-1)[v], leaf, retain_graph=True)
            best = row if best is None else torch.where(row.abs() > best.abs(), row, best)
        assert best is not None
        total = best if total is None else total + best
    assert total is not None
    return (total / draws)[0].cpu()


def _floor(model: torch.nn.Module, x: torch.Tensor, domain: torch.Tensor, patch: int) -> None:
    from instasal.saliency.windows import window_for

    window = window_for(domain, "patch", patch_size=(patch,) * 3)
    model.eval()
    leaf = window.crop(x).to(next(model.parameters()).device).unsqueeze(0).requires_grad_(True)
    logits = model(leaf)[0, 1]
    voxels = torch.nonzero(domain[window.slices].reshape(-1)).reshape(-1).to(logits.device)
    one_hot = logits.new_zeros(len(voxels), logits.numel())
    one_hot[torch.arange(len(voxels), device=logits.device), voxels] = 1
    torch.autograd.grad(
        logits, leaf, one_hot.reshape(len(voxels), *logits.shape), is_grads_batched=True
    )


def _run(setting: Setting, name: str, model, x, domain) -> tuple[torch.Tensor | None, str]:
    from instasal.saliency import cached_engine_choices, instance_smoothgrad

    if name.startswith("authors"):
        return _authors(model, x, domain, setting.draws), ""
    if name == "floor":
        _floor(model, x, domain, setting.patch)
        return None, ""
    engine, context, *variant = name.split("/")
    layout = "channels_last" if variant == ["channels_last"] else "contiguous"
    packing = [] if layout == "channels_last" else variant
    saliency_map = instance_smoothgrad(
        model,
        x,
        domain,
        n_samples=setting.draws,
        engine=engine,
        context=context,
        patch_size=setting.patch,
        draws_per_pass=int(packing[0]) if packing else None,
        memory_format=layout,
    )
    notes = []
    if engine == "auto":
        window = (2, *(setting.patch,) * 3) if context == "patch" else (2, *setting.volume)
        for key, choice in cached_engine_choices(model).items():
            if key[0][1:] == window:
                notes.append(
                    f"{key[0][0]} draw(s)/pass: auto chose {choice.engine}: naive "
                    f"{choice.naive_seconds_per_row:.3f} s/row, batched "
                    f"{choice.batched_seconds_per_row:.3f} s/row "
                    f"(up to {choice.rows_per_call} rows/call under the memory budget)"
                )
    note = "; ".join(notes)
    return saliency_map, note


def measure(setting: Setting, name: str) -> Measurement:
    """Time one procedure in this (fresh, forked) process; ``auto`` after its cached measurement."""
    from instasal.saliency import instance_smoothgrad

    torch.set_num_threads(setting.threads)
    model, x, domain = build(setting)
    _warm_up(model, x, setting.patch if "/patch" in name or name == "floor" else None)
    warm_up = ""
    if name.startswith("auto/"):
        started = time.perf_counter()
        instance_smoothgrad(
            model,
            x,
            domain,
            n_samples=setting.draws,
            context=name.split("/")[1],
            patch_size=setting.patch,
        )
        warm_up = (
            f"one-off engine measurement and first call {time.perf_counter() - started:.1f} s; "
        )
    cuda = setting.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _rss_bytes()
    started = time.perf_counter()
    saliency_map, note = _run(setting, name, model, x, domain)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    draws = 1 if name == "floor" else setting.draws
    return Measurement(
        name, seconds, setting.rows, max(peak, 0), saliency_map, warm_up + note, draws
    )


def _in_child(setting: Setting, name: str) -> Measurement:
    # A forked child per procedure: its own peak memory, nothing cached from the others. The parent
    # runs no torch computation, so forking is safe for torch's thread pools.
    context = multiprocessing.get_context("fork" if setting.device == "cpu" else "spawn")
    with context.Pool(1) as pool:
        return pool.apply(measure, (setting, name))


def _warm_up(model: torch.nn.Module, x: torch.Tensor, patch: int | None) -> None:
    """One untimed forward pass at the procedure's input size, so it pays no first-call costs.

    Only that size: a larger warm-up would set the process's peak memory above the procedure's.
    """
    model.eval()
    device = next(model.parameters()).device
    inputs = x if patch is None else x[:, :patch, :patch, :patch]
    with torch.no_grad():
        model(inputs.unsqueeze(0).to(device))


def _parameters(setting: Setting) -> str:
    """The loaded model's parameter count, in a child process (the parent runs no torch)."""
    context = multiprocessing.get_context("fork" if setting.device == "cpu" else "spawn")
    with context.Pool(1) as pool:
        count = pool.apply(_count_parameters, (setting,))
    return f"{count / 1e6:.1f} M"


def _count_parameters(setting: Setting) -> int:
    model, _, _ = build(setting)
    return sum(p.numel() for p in model.parameters())


def _hardware(device: str, threads: int) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(__import__("os").sched_getaffinity(0))
    return f"{model}, {cores} cores visible, {threads} torch threads (torch {torch.__version__})"


def authors_over(authors: Measurement, ours: Measurement) -> float:
    """The authors' seconds per row over ours (> 1: ours is faster)."""
    return authors.seconds_per_row / ours.seconds_per_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 min on 2 cores")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--rows", type=int, default=None, help="lesion voxels (Jacobian rows)")
    parser.add_argument("--draws", type=int, default=None, help="noise draws (N)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternate authors and auto/full this many times"
    )
    parser.add_argument(
        "--width", choices=tuple(WIDTHS), default="small", help="authors: their U-Net's channels"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--norm", choices=("batch", "instance"), default="batch", help="batch: the authors' U-Net"
    )
    parser.add_argument(
        "--model", default=None, help="a model instasal loads (name, file, folder) instead"
    )
    args = parser.parse_args()
    quick = QUICK_AUTHORS if args.width == "authors" or args.model else QUICK
    geometry: dict[str, Any] = quick if args.quick else PAPER
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    setting = Setting(
        volume=geometry["volume"],
        patch=geometry["patch"],
        rows=args.rows or geometry["rows"],
        device=device,
        threads=args.threads,
        norm=args.norm,
        draws=args.draws or geometry["draws"],
        width=args.width,
        model=args.model,
    )
    names = [
        "authors",
        "naive/full",
        "auto/full",
        "auto/full/1",
        "naive/patch",
        "batched/patch",
        "auto/patch",
        "auto/patch/1",
        "auto/patch/channels_last",
        "auto/deployed",
    ]
    if device == "cuda":
        names.append("floor")
    if setting.model is not None:
        # A loaded model's deployed forward is its own predictor's (an nnU-Net folder's crops,
        # resampling and tiles), stated per subject by the pipeline; this synthetic input has none.
        names.remove("auto/deployed")
    print(f"hardware: {_hardware(device, args.threads)}")
    described = (
        f"{setting.model} ({_parameters(setting)} parameters)"
        if setting.model
        else f"MONAI UNet channels {WIDTHS[setting.width]}, 2 res units, {setting.norm} norm"
    )
    print(
        f"model: {described} (eval); volume {setting.volume}, patch {setting.patch}³, lesion of "
        f"{setting.rows} voxels, {setting.draws} noise draws"
    )
    results = {name: _in_child(setting, name) for name in names}
    ratios = [authors_over(results["authors"], results["auto/full"])]
    for _ in range(args.repeats - 1):
        ratios.append(authors_over(_in_child(setting, "authors"), _in_child(setting, "auto/full")))

    from instasal.saliency import map_agreement

    reference = results["naive/full"].saliency_map
    authors = results["authors"]
    header = f"{'procedure':<14} {'s/row':>9} {'rows/s':>9} {'peak MiB':>9} {'vs authors':>11}"
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        speedup = authors.seconds_per_row / result.seconds_per_row
        print(
            f"{name:<14} {result.seconds_per_row:>9.3f} {1 / result.seconds_per_row:>9.2f} "
            f"{result.peak_bytes / 2**20:>9.0f} {speedup:>10.2f}x"
        )
    for name, result in results.items():
        if result.note:
            print(f"{name}: {result.note}")
    assert reference is not None
    for name in ("authors", "auto/full"):
        candidate = results[name].saliency_map
        assert candidate is not None
        gap = map_agreement(candidate, reference)["relative_max_difference"]
        print(f"{name} vs naive/full: relative max difference {gap:.2e} (exactness)")
    patch_map = results["auto/patch"].saliency_map
    assert patch_map is not None
    agreement = map_agreement(patch_map, reference)
    print(
        "patch vs full agreement: "
        + ", ".join(f"{key} {value:.4g}" for key, value in agreement.items())
    )
    ratios.sort()
    print(
        f"engine alone (auto/full vs authors), {len(ratios)} alternating runs: median "
        f"{ratios[len(ratios) // 2]:.2f}x, range {ratios[0]:.2f}–{ratios[-1]:.2f}x"
    )
    for context in ("full", "patch"):
        packed = (
            results[f"auto/{context}/1"].seconds_per_row
            / results[f"auto/{context}"].seconds_per_row
        )
        print(f"draws forwarded together vs one per pass ({context}): {packed:.2f}x")
    if "auto/deployed" in results:
        deployed = results["auto/deployed"]
        assert deployed.saliency_map is not None
        cost = deployed.seconds_per_row / results["auto/patch"].seconds_per_row
        gap = map_agreement(deployed.saliency_map, reference)["relative_max_difference"]
        print(
            f"deployed vs patch context: {cost:.2f}x the cost per row; deployed vs full map: "
            f"relative max difference {gap:.2e}"
        )
    layout = (
        results["auto/patch"].seconds_per_row / results["auto/patch/channels_last"].seconds_per_row
    )
    channels_last = results["auto/patch/channels_last"].saliency_map
    assert channels_last is not None
    gap = map_agreement(channels_last, patch_map)["relative_max_difference"]
    print(f"channels-last vs contiguous input (patch): {layout:.2f}x, maps differ by {gap:.1e}")
    if "floor" in results:
        fraction = results["floor"].seconds_per_row / results["auto/patch"].seconds_per_row
        print(
            f"fraction of the batched-VJP floor (floor s/row over auto/patch s/row): {fraction:.2f}"
        )
    speedup = authors.seconds_per_row / results["auto/patch"].seconds_per_row
    print(f"speedup_vs_authors: {speedup:.1f}x")


if __name__ == "__main__":
    main()
