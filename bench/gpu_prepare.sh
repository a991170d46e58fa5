#!/bin/sh
# Prepares what bench/gpu.py needs on a bare GPU machine (no package registry there) and prints the
# device tool's exact `run` call, so that the lent minutes go to measuring:
#   .whl/            monai, nibabel and pydicom wheels for the device's Python 3.12 (the rest is on its image)
#   .gpu/tokenizer/  the WordPiece tokenizer (the built-in MiniLM's vocabulary; the text tower is built from its config)
# then a CPU smoke run of the script.   Usage: sh bench/gpu_prepare.sh
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2
mkdir -p .gpu
$PY -c "
from transformers import AutoTokenizer
from medalign.models.text import resolve_text_model
AutoTokenizer.from_pretrained(str(resolve_text_model('builtin:all-minilm-l6-v2'))).save_pretrained('.gpu/tokenizer')"
$PY bench/gpu.py --smoke --sections chest --out .gpu/smoke > .gpu/smoke.log 2>&1 || { tail -5 .gpu/smoke.log; exit 1; }
du -sh .whl .gpu/tokenizer
cat <<'CMD'
device run, carry [".whl", ".gpu/tokenizer"], timeout_s 480, command:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/nvidia-smi.csv; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false; python3 bench/gpu.py --out $OUT --budget-s 400 --tokenizer .gpu/tokenizer 2>&1 | tee $OUT/log.txt
CMD
