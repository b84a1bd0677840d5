#!/usr/bin/env bash
# Reproduce the README's results table: train each stage of pipelines/shared_data.yaml
# on ../shared/data with `textworker train` (28-minute budget each) and score it with
# `textworker eval` on the held-out split. Figures land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${TEXTWORKER_SHARED_DATA:-../shared/data}
OUT=benchmarks/results
mkdir -p "$OUT"
TW=${TW:-.venv/bin/textworker}
P=pipelines/shared_data.yaml

run() {  # stage train-file eval-file out-dir extra-train-args...
  local stage=$1 train=$2 test=$3 dir=$4; shift 4
  local t0=$(date +%s)
  $TW train $P --stage "$stage" --data "$D/$train" --max-minutes 28 --out "$dir" --json --quiet "$@" > "$OUT/$stage.train.json"
  local t1=$(date +%s)
  $TW eval $P --stage "$stage" --data "$D/$test" --model "$dir" --json --quiet > "$OUT/$stage.eval.json"
  echo "$stage: trained in $((t1 - t0)) s (wall, incl. start-up); $(python3 -c "import json,sys; m=json.load(open('$OUT/$stage.eval.json'))['metrics']; print({k: v for k, v in m.items() if not isinstance(v, dict)})")"
}

run spam sms_spam/train.tsv sms_spam/test.tsv models/spam/v1-shared --epochs 2 --max-length 128
run sentiment sst2/train.tsv sst2/dev.tsv models/sentiment/v1-shared --epochs 1 --max-length 64
run topic ag_news/train.tsv ag_news/test.tsv models/topic/v1-shared --epochs 1 --max-length 128
run qa qa/train.jsonl qa/eval.jsonl models/qa/v1-shared --epochs 2 --lr 1e-4 --batch-size 16 --max-length 384
run translate translation_en_de/train.jsonl translation_en_de/test.jsonl models/translate-multi30k/v1 --base scratch --size small
