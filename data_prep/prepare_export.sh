#!/usr/bin/env bash
# Prepare a PACS export (one folder per study) and its reports for pretraining, then check labels.
#   data_prep/prepare_export.sh IMAGES_DIR REPORTS.csv OUT_DATASET [PREP_PRESET] [VOCAB]
# PREP_PRESET: a file or a name under configs/prep (default chest_ct); VOCAB: default chest_ct.
# Rerunning resumes: finished studies are skipped; failures are listed in OUT_DATASET/errors.jsonl.
set -euo pipefail
images=${1:?images folder}; reports=${2:?reports file}; out=${3:?output dataset}
preset=${4:-chest_ct}; vocab=${5:-chest_ct}
here=$(cd "$(dirname "$0")/.." && pwd)
medalign=${MEDALIGN:-$here/.venv/bin/medalign}
"$medalign" label --reports "$reports" --out "$out.labels.csv" --vocab "$vocab"
status=0
"$medalign" prep --images "$images" --reports "$reports" --out "$out" --config "$preset" --vocab "$vocab" || status=$?
if [ "$status" -eq 3 ]; then
  echo "some studies failed; see $out/errors.jsonl" >&2
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
echo "dataset: $out (manifest.parquet); parsed labels: $out.labels.csv"
