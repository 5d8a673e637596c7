"""Connected components on a 1 mm brain-sized volume: scipy.ndimage vs connected-components-3d.

Prints seconds per call for each connectivity and the ratio, measured side by side in one run.
Usage: ``python benchmarks/components.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time

import cc3d
import numpy as np
from scipy import ndimage

from instasal.instances import label_components

SHAPE = (197, 233, 189)  # the 1 mm MNI152 grid


def lesion_like_mask(seed: int = 0) -> np.ndarray:
    """A sparse mask of ~300 smooth blobs, like a heavily lesioned 1 mm brain."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), 2.0)
    return noise > np.quantile(noise, 0.995)


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    mask = lesion_like_mask()
    print(f"volume {SHAPE}, {int(mask.sum())} lesion voxels")
    print(f"{'connectivity':>12} {'scipy s':>9} {'cc3d s':>9} {'ours s':>9} {'scipy/cc3d':>11}")
    for connectivity, rank in ((6, 1), (18, 2), (26, 3)):
        structure = ndimage.generate_binary_structure(3, rank)
        scipy_s = best_of(lambda s=structure: ndimage.label(mask, structure=s), args.repeats)
        cc3d_s = best_of(
            lambda c=connectivity: cc3d.connected_components(mask, connectivity=c), args.repeats
        )
        ours_s = best_of(lambda c=connectivity: label_components(mask, c), args.repeats)
        _, n_scipy = ndimage.label(mask, structure=structure)
        _, n_ours = label_components(mask, connectivity)
        assert n_scipy == n_ours, (n_scipy, n_ours)
        print(
            f"{connectivity:>12} {scipy_s:>9.3f} {cc3d_s:>9.3f} {ours_s:>9.3f} "
            f"{scipy_s / cc3d_s:>10.1f}x"
        )


if __name__ == "__main__":
    main()
