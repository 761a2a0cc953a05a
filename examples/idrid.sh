#!/usr/bin/env bash
# IDRiD, pixel-level anomaly localisation: the paper's Table 2 (section 4.1).
#
# Train on IDRiD's normal photographs (retinopathy grade 0 of the disease-grading training set:
# 134 in the paper), then localise the lesions of the 81 segmentation images (both IDRiD splits,
# lesion masks MA, HE, EX, SE) with the grade-0 test photographs (32 in the paper) as normal
# images; report pixel AUROC, balanced accuracy (ACC) and AUPR.
#
# Expected layout (IDRiD as downloaded from IEEE Dataport, doi:10.21227/H25W98):
#   $IDRID/A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg
#   $IDRID/A. Segmentation/2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
#        {1. Microaneurysms,2. Haemorrhages,3. Hard Exudates,4. Soft Exudates}/IDRiD_NN_XX.tif
#   $IDRID/B. Disease Grading/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NNN.jpg
#   $IDRID/B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
#   $IDRID/B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv
#
#   IDRID=/data/IDRiD bash examples/idrid.sh
#
# Environment: IDRID (required); OUT (default runs/idrid); N (synthetic samples, default 20000:
# about 22 GB at 768 px); SIZE (768, the paper's); EPOCHS (per stage; default 300); TRAIN_ARGS
# (more `resynth train` options); DEVICE (cuda); BATCH (evaluation batch, 16).
# Run times on one GPU: see examples/README.md (estimates). Rerunning resumes where it stopped.
set -euo pipefail

IDRID=${IDRID:?set IDRID to the IDRiD folder (see the layout at the top of this script)}
OUT=${OUT:-runs/idrid}
N=${N:-20000}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-16}
SIZE=${SIZE:-768}
EPOCH_ARGS=()
if [[ -n "${EPOCHS:-}" ]]; then EPOCH_ARGS=(--epochs "$EPOCHS"); fi
read -r -a EXTRA_TRAIN <<< "${TRAIN_ARGS:-}"  # more `resynth train` options, e.g. "--batch-size 4"
GRADING="$IDRID/B. Disease Grading"
mkdir -p "$OUT"

# 0. The grade-0 photographs of the grading set, as folders of links: training normals from its
#    training split, normal test images from its test split. (IDRiD's label CSVs name images
#    without extension in a column "Image name", so a few lines of Python pick them.)
python - "$GRADING" "$OUT" <<'PY'
import csv, sys
from pathlib import Path

grading, out = Path(sys.argv[1]), Path(sys.argv[2])
for split, labels, folder in (
    ("train", "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
    ("test", "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
):
    csv_path, images = grading / "2. Groundtruths" / labels, grading / "1. Original Images" / folder
    if not csv_path.is_file() or not images.is_dir():
        sys.exit(f"error: {csv_path} or {images} not found (see the layout in examples/idrid.sh)")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            for row in csv.DictReader(fh)
        ]
    names = [r["image name"] for r in rows if r.get("retinopathy grade") == "0" and r["image name"]]
    target = out / f"normal-{split}"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        found = sorted(images.glob(name + ".*"))
        if not found:
            print(f"note: {name}: no file in {images}", file=sys.stderr)
            continue
        link = target / found[0].name
        if not link.exists():
            link.symlink_to(found[0].resolve())
    print(f"{split}: {len(names)} grade-0 photographs -> {target}")
PY

# 1. Synthetic lesions from the normal training photographs, 768 px (paper 4.1).
anomalygen render --src "$OUT/normal-train" --n "$N" --size "$SIZE" --out "$OUT/synth.zarr" \
  --seed 0 --report "$OUT/render-skipped.txt"

# 2. Both stages with the paper's schedule.
resynth train --data "$OUT/synth.zarr" --out "$OUT/run" --device "$DEVICE" --resume \
  "${EPOCH_ARGS[@]}" "${EXTRA_TRAIN[@]}"

# 3. Table 2: the 81 segmentation images (--split all: both IDRiD splits, as the paper) and the
#    normal test photographs.
resynth evaluate --checkpoint "$OUT/run" --dataset idrid --root "$IDRID" --split all \
  --normal-dir "$OUT/normal-test" --out "$OUT/eval-idrid" --device "$DEVICE" --batch-size "$BATCH"

echo "done: $OUT/eval-idrid/metrics.md (Table 2), Fig. 4-style overlays in $OUT/eval-idrid/overlays"
