#!/usr/bin/env bash
# One GPU session: the CUDA tests, the saliency benchmark on the GPU (our width and the authors'),
# and one paper-settings subject explained end to end. Everything is written under ${OUT:-gpu_out}.
#
# Runs from the repository root with a python3 that has a CUDA torch. Packages that python lacks
# (monai, nibabel, nilearn and their needs) can be given as wheels in .whl/: they are installed
# into /tmp/site first. Sized to finish in about 10 minutes on one recent GPU.
set -euo pipefail
out=${OUT:-gpu_out}
py=${PY:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
date -u +%FT%TZ >"$out/date.txt"

echo "== CUDA tests"
$py -m pytest -q -p no:cacheprovider tests/test_saliency_engines.py tests/test_saliency_packing.py \
    tests/test_saliency_smoothgrad.py 2>&1 | tee "$out/tests.txt" | tail -3

echo "== benchmark, our width"
timeout 240 $py benchmarks/saliency.py --device cuda --repeats 3 2>&1 | tee "$out/bench_small.txt"
echo "== benchmark, the authors' width"
timeout 240 $py benchmarks/saliency.py --device cuda --width authors --repeats 1 2>&1 |
    tee "$out/bench_authors.txt"

echo "== one 1 mm phantom subject at the paper's settings (N = 50, patch context)"
$py -m instasal phantom "$out/phantom" -n 1 --resolution 1 >"$out/phantom.txt" 2>&1
subject=$(find "$out/phantom" -name "*FLAIR.nii.gz" | head -1)
t1=${subject/FLAIR/T1w}
started=$(date +%s)
timeout 300 $py -m instasal explain "$subject" "$t1" --out "$out/explain" --n-samples 50 \
    --context patch --no-gradcam 2>&1 | tail -5 | tee "$out/explain.txt"
echo "explain wall seconds: $(($(date +%s) - started))" | tee -a "$out/explain.txt"
