#!/usr/bin/env bash
# EyeQ, image-level anomaly detection: the paper's Table 1 (section 4.1).
#
# Train on the good-quality DR-grade-0 images of EyeQ's training set (6,324 in the paper), then
# score EyeQ's good-quality test images (8,470) and report AUROC of grade 0 against each grade
# 1-4 and against all of them.
#
# Expected layout (EyeQ's label files from github.com/HzFu/EyeQ; the photographs are EyePACS's,
# from Kaggle's "diabetic-retinopathy-detection", original or EyeQ-preprocessed, any extension):
#   $EYEQ/train/10_left.jpeg ...        photographs named in Label_EyeQ_train.csv
#   $EYEQ/test/1_left.jpeg ...          photographs named in Label_EyeQ_test.csv
#   $EYEQ/Label_EyeQ_train.csv          columns: (index), image, quality (0 good), DR_grade
#   $EYEQ/Label_EyeQ_test.csv
#
#   EYEQ=/data/eyeq bash examples/eyeq.sh
#
# Environment: EYEQ (required); OUT (default runs/eyeq); N (synthetic samples, default 100000:
# about 110 GB at 768 px); SIZE (768, the paper's); EPOCHS (per stage; default the training
# default, 300); TRAIN_ARGS (more `resynth train` options, e.g. "--batch-size 4"); DEVICE (cuda);
# WORKERS (render processes, default one per CPU); BATCH (evaluation batch, 16).
# Run times on one GPU: see examples/README.md (estimates). Rerunning resumes where it stopped.
set -euo pipefail

EYEQ=${EYEQ:?set EYEQ to the EyeQ folder (see the layout at the top of this script)}
OUT=${OUT:-runs/eyeq}
N=${N:-100000}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-auto}
BATCH=${BATCH:-16}
SIZE=${SIZE:-768}
EPOCH_ARGS=()
if [[ -n "${EPOCHS:-}" ]]; then EPOCH_ARGS=(--epochs "$EPOCHS"); fi
read -r -a EXTRA_TRAIN <<< "${TRAIN_ARGS:-}"  # more `resynth train` options, e.g. "--batch-size 4"
for needed in train test Label_EyeQ_train.csv Label_EyeQ_test.csv; do
  [[ -e "$EYEQ/$needed" ]] || { echo "error: $EYEQ/$needed not found" >&2; exit 1; }
done
mkdir -p "$OUT"

# 1. Synthetic lesions from the good-quality grade-0 training photographs, 768 px (paper 4.1).
anomalygen render --src "$EYEQ/train" --labels "$EYEQ/Label_EyeQ_train.csv" \
  --where DR_grade=0 --where quality=0 --n "$N" --size "$SIZE" --out "$OUT/synth.zarr" \
  --workers "$WORKERS" --seed 0 --report "$OUT/render-skipped.txt"

# 2. Stage 1 (E_r/D_r on the normals) then stage 2 (localisation on the synthetic lesions),
#    the paper's schedule. Several GPUs:
#    torchrun --nproc_per_node N -m anomalygen_cli.resynth_cli train ...
resynth train --data "$OUT/synth.zarr" --out "$OUT/run" --device "$DEVICE" --resume \
  "${EPOCH_ARGS[@]}" "${EXTRA_TRAIN[@]}"

# 3. Table 1: all good-quality test images (quality 0), grade 0 normal, 1-4 abnormal.
resynth evaluate --checkpoint "$OUT/run" --dataset eyeq --root "$EYEQ/test" \
  --labels "$EYEQ/Label_EyeQ_test.csv" --out "$OUT/eval-eyeq" --device "$DEVICE" \
  --batch-size "$BATCH"

echo "done: $OUT/eval-eyeq/metrics.md (Table 1), per-image scores in $OUT/eval-eyeq/per_image.csv"
