#!/usr/bin/env bash
# The whole protocol at small scale on a CPU, with the photographs in ../shared/data:
# render synthetic lesions from healthy fundus photographs at 256 px, train both stages with the
# "small" preset, evaluate on the two IDRiD images of idrid-mini (pixel level, Table 2 layout)
# against three healthy photographs held out of training (image level), and predict on a
# diabetic-retinopathy photograph.
#
#   bash examples/cpu_small.sh                  # about 35 minutes on a 2-core CPU (see README)
#   STEPS=20 bash examples/cpu_small.sh         # a quick smoke run (a few minutes, weak model)
#
# Environment: DATA (default ../shared/data from the project root), OUT (default runs/cpu-small),
# STEPS (training steps per stage; default: the preset's 350), N (synthetic samples, 2560).
# Rerunning the script resumes: the render and the training continue where they stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cpu-small}
N=${N:-2560}
SIZE=256
STEPS_ARGS=()
if [[ -n "${STEPS:-}" ]]; then STEPS_ARGS=(--steps "$STEPS"); fi

for needed in fundus-normal idrid-mini fundus-dr; do
  [[ -d "$DATA/$needed" ]] || { echo "error: $DATA/$needed not found (set DATA)" >&2; exit 1; }
done
mkdir -p "$OUT/heldout-normal"

# Three healthy photographs are held out of training: they are the normal images of the
# evaluation (scoring training images would flatter the image-level AUROC).
HELDOUT=(CHASEDB1_12R.png HRF_14_h.jpg HRF_15_h.jpg)
: > "$OUT/train-normals.txt"
for path in "$DATA"/fundus-normal/*; do
  name=$(basename "$path")
  if [[ " ${HELDOUT[*]} " == *" $name "* ]]; then
    ln -sf "$(realpath "$path")" "$OUT/heldout-normal/$name"
  else
    realpath "$path" >> "$OUT/train-normals.txt"
  fi
done
echo "training normals: $(wc -l < "$OUT/train-normals.txt"), held out: ${#HELDOUT[@]}"

# 1. Synthetic lesions (anomalygen, paper 3.3): N image/mask pairs at 256 px.
anomalygen render --src "$OUT/train-normals.txt" --n "$N" --size "$SIZE" \
  --out "$OUT/synth.zarr" --seed 0

# 2. Both stages (paper 3.1, 3.2) with the CPU preset (256 px, depth 4, width 16, 350 steps).
resynth train --data "$OUT/synth.zarr" --out "$OUT/run" --preset small --device cpu \
  --resume "${STEPS_ARGS[@]}"

# 3. Evaluation: pixel level on idrid-mini's two images (hard-exudate masks only), image level
#    against the held-out healthy photographs.
resynth evaluate --checkpoint "$OUT/run" --dataset idrid --root "$DATA/idrid-mini" \
  --normal-dir "$OUT/heldout-normal" --out "$OUT/eval-idrid-mini" --device cpu

# 4. Anomaly maps for a photograph with diabetic retinopathy (no ground truth).
resynth predict "$DATA/fundus-dr" --checkpoint "$OUT/run" --out "$OUT/predict-dr" --device cpu

echo "done: $OUT/eval-idrid-mini/metrics.md, overlays in $OUT/eval-idrid-mini/overlays," \
  "predictions in $OUT/predict-dr"
