#!/usr/bin/env bash
# Set up a virtual environment in .venv with instasal and its development tools.
# torch is installed first (2.13.0: the local CPU build on our machines) unless one is already
# importable; everything else is installed with a constraint pinning that torch, so no dependency
# can swap it for a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q "torch==${INSTASAL_TORCH_VERSION:-2.13.0}"
fi
TORCH_VERSION=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
mkdir -p .venv/instasal
echo "torch==${TORCH_VERSION}" > .venv/instasal/constraints.txt
"$VPY" -m pip install -q -c .venv/instasal/constraints.txt -e ".[dev]"
# The report's browser test (headless Chromium) runs wherever a chromium is installed: install one
# where the set-up may (root with apt-get, as in CI containers); never fail the set-up for it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && [ "${INSTASAL_NO_BROWSER:-0}" != 1 ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
            >/dev/null 2>&1 \
            || echo "note: chromium could not be installed; the report's browser test is skipped"
    else
        echo "note: no chromium (apt-get install chromium as root); the browser test is skipped"
    fi
fi
echo "instasal set up in .venv (torch ${TORCH_VERSION})"
