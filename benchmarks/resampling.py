"""Cost of explaining through the in-graph resampling (issue 12), measured side by side.

The built-in U-Net (2 mm, 48³ patches) explains one domain (a cube of ``--side``³ voxels), patch
context, one noise-free draw:

- ``native 2 mm``: the subject at the model's voxel size, no resampling (the plain network);
- ``1 mm copy``: the same subject with every voxel repeated 2×2×2, explained through
  :class:`instasal.prepare.ResampledNetwork` (area averaging into the network, the containing model
  voxel back). The network sees the same 48³ patch; the extra cost is the resampling of the
  96³ working patch, forward and backward, per Jacobian row.

Both runs use the same engine and the same number of rows; each is repeated ``--repeats`` times and
the median reported, with the ratio. Not a timed test.

Usage: ``python benchmarks/resampling.py [--side S] [--repeats K] [--threads T] [--engine E]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from instasal.models import load_model
from instasal.prepare import ResampledNetwork
from instasal.saliency import instance_smoothgrad


def _domain(shape: tuple[int, int, int], side: int) -> torch.Tensor:
    """A cube of side³ voxels at the centre of the grid."""
    domain = torch.zeros(shape, dtype=torch.bool)
    low = [n // 2 for n in shape]
    domain[low[0] : low[0] + side, low[1] : low[1] + side, low[2] : low[2] + side] = True
    return domain


def _seconds(model: torch.nn.Module, x: torch.Tensor, domain: torch.Tensor, engine: str) -> float:
    started = time.perf_counter()
    instance_smoothgrad(
        model,
        x,
        domain,
        n_samples=1,
        noise_level=0.0,
        context="patch",
        engine=engine,  # type: ignore[arg-type]
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2, help="domain: a cube of side³ voxels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", default="naive", choices=["naive", "batched", "auto"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.side**3
    torch.manual_seed(0)
    model = load_model("unet")
    coarse = torch.randn(2, 64, 64, 64)
    fine = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    resampled = ResampledNetwork(model, (1.0, 1.0, 1.0))
    cases = {
        "native 2 mm": (model, coarse, _domain((64, 64, 64), args.side)),
        "1 mm copy": (resampled, fine, _domain((128, 128, 128), args.side)),
    }
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, engine {args.engine}, {rows} rows, patch context"
    )
    medians = {}
    for name, (network, x, domain) in cases.items():
        _seconds(network, x, domain, args.engine)  # warm-up (and auto's one-off choice)
        times = [_seconds(network, x, domain, args.engine) for _ in range(args.repeats)]
        medians[name] = statistics.median(times) / rows
        print(
            f"{name:>12}: {medians[name]:.4f} s/row (median of {args.repeats}; "
            f"min {min(times) / rows:.4f})"
        )
    print(f"resampling_overhead: {medians['1 mm copy'] / medians['native 2 mm']:.2f}x")


if __name__ == "__main__":
    main()
