#!/usr/bin/env bash
# The whole protocol at small scale on a CPU, with the photographs in ../shared/data: render
# synthetic lesions from IDRiD's healthy photographs at 256 px, train both stages with the
# "small" preset, localise the real lesions (MA, HE, EX, SE) of the 30 IDRiD photographs of
# idrid-512 (pixel level, Table 2 layout, per lesion type) with nine held-out healthy
# photographs as the normal images (image level), and predict on a diabetic-retinopathy
# photograph of another camera.
#
#   bash examples/cpu_small.sh                  # under 40 minutes on a 2-core CPU (see README)
#   STEPS=20 bash examples/cpu_small.sh         # a quick smoke run (a few minutes, weak model)
#
# Environment: DATA (default ../shared/data from the project root), OUT (default runs/cpu-small),
# STEPS (training steps per stage; default: the preset's), N (synthetic samples, 2560).
# Rerunning the script resumes: the render and the training continue where they stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cpu-small}
N=${N:-2560}
SIZE=256
STEPS_ARGS=()
if [[ -n "${STEPS:-}" ]]; then STEPS_ARGS=(--steps "$STEPS"); fi

for needed in idrid-normal-512 idrid-512 fundus-dr; do
  [[ -d "$DATA/$needed" ]] || { echo "error: $DATA/$needed not found (set DATA)" >&2; exit 1; }
done
mkdir -p "$OUT/heldout-normal"

# Nine healthy photographs are held out of training: they are the normal images of the
# evaluation (scoring training images would flatter the image-level AUROC).
: > "$OUT/train-normals.txt"
for path in "$DATA"/idrid-normal-512/*; do
  name=$(basename "$path")
  if [[ "$name" =~ IDRiD_NAR_08[1-9] ]]; then
    ln -sf "$(realpath "$path")" "$OUT/heldout-normal/$name"
  else
    realpath "$path" >> "$OUT/train-normals.txt"
  fi
done
echo "training normals: $(wc -l < "$OUT/train-normals.txt"), held out: 9"

# 1. Synthetic lesions (anomalygen, paper 3.3, our fundus-toned defaults): N pairs at 256 px.
anomalygen render --src "$OUT/train-normals.txt" --n "$N" --size "$SIZE" \
  --out "$OUT/synth.zarr" --seed 0

# 2. Both stages (paper 3.1, 3.2) with the CPU preset (depth 4, width 16, local contrast,
#    stage 1 700 steps of 4, stage 2 1,000 steps of 4).
resynth train --data "$OUT/synth.zarr" --out "$OUT/run" --preset small --device cpu \
  --resume "${STEPS_ARGS[@]}"

# 3. Evaluation: pixel level on idrid-512 (all four lesion types, with per-type rows and PR/ROC
#    curves), image level against the held-out healthy photographs.
resynth evaluate --checkpoint "$OUT/run" --dataset idrid --root "$DATA/idrid-512" \
  --normal-dir "$OUT/heldout-normal" --out "$OUT/eval-idrid-512" --device cpu

# 4. Anomaly maps for a photograph with diabetic retinopathy (no ground truth).
resynth predict "$DATA/fundus-dr" --checkpoint "$OUT/run" --out "$OUT/predict-dr" --device cpu

echo "done: $OUT/eval-idrid-512/metrics.md (and curves.png, overlays/)," \
  "predictions in $OUT/predict-dr"
