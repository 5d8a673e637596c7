#!/bin/bash
# Open question Q1 (issue 8): train the U-Net at three patch sizes with one protocol and compare the
# perilesional context each needs. CPU: about 2.5 h on 2 cores; a GPU makes training minutes.
#   bash scripts/q1_patch_sizes.sh  [RUNS=runs/q1]
set -euo pipefail
runs=${RUNS:-runs/q1}
instasal=.venv/bin/instasal
[ -d runs/phantoms_v2/train ] || { echo "make the training cohorts first (docs/models.md)"; exit 2; }
[ -d runs/exp_cohort ] || $instasal phantom runs/exp_cohort --subjects 40 --seed 12
for patch in 32 48 64; do
  .venv/bin/python scripts/train.py runs/phantoms_v2/train --val runs/phantoms_v2/val \
    --out "$runs/unet_p$patch" --architecture unet --patch "$patch" --epochs 40 --iterations 60 \
    --threads 1 --export "$runs/export" --name "unet_p$patch"
  $instasal experiment context runs/exp_cohort --out "$runs/context_p$patch" \
    --model "$runs/export/unet_p$patch.pt" --max-lesions 60
done
.venv/bin/python scripts/context_by_patch.py "$runs/context_p32" "$runs/context_p48" \
  "$runs/context_p64" --labels "32³ patch" "48³ patch" "64³ patch" \
  --out docs/results/context_by_patch.png --overwrite
