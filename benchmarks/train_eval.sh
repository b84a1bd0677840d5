#!/usr/bin/env bash
# Reproduce the results table of docs/benchmarks.md: for each stage of
# pipelines/shared_data.yaml (or the stages named as arguments), run its recipe (the
# stage's `train:` block) with `textworker train`, then score the new version on the
# recipe's `eval_data` with `textworker eval`. Figures land in benchmarks/results/.
#
#   benchmarks/train_eval.sh                 # every stage
#   benchmarks/train_eval.sh spam topic      # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
export TEXTWORKER_SHARED_DATA=${TEXTWORKER_SHARED_DATA:-../shared/data}
OUT=benchmarks/results
mkdir -p "$OUT"
TW=${TW:-.venv/bin/textworker}
PY=${PY:-.venv/bin/python}
P=pipelines/shared_data.yaml
STAGES=("$@")
# further test sets a stage is scored on besides its recipe's eval_data
declare -A ALSO=([translate_general]="$TEXTWORKER_SHARED_DATA/translation_en_de/test.jsonl")
if [ ${#STAGES[@]} -eq 0 ]; then
    mapfile -t STAGES < <($PY -c "from worker.config import load_pipeline; print('\n'.join(s.name for s in load_pipeline('$P').stages if s.train))")
fi
echo "$(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'); flags: $(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for stage in "${STAGES[@]}"; do
    t0=$(date +%s)
    $TW train $P --stage "$stage" --json --quiet > "$OUT/$stage.train.json"
    t1=$(date +%s)
    model=$($PY -c "import json; print(json.load(open('$OUT/$stage.train.json'))['out'])")
    $TW eval $P --stage "$stage" --model "$model" --json --quiet > "$OUT/$stage.eval.json"
    echo "$stage: trained in $((t1 - t0)) s (wall, incl. start-up) -> $model; $($PY -c "import json; m=json.load(open('$OUT/$stage.eval.json'))['metrics']; print({k: v for k, v in m.items() if not isinstance(v, dict)})")"
    if [ -n "${ALSO[$stage]:-}" ]; then
        $TW eval $P --stage "$stage" --model "$model" --data "${ALSO[$stage]}" --json --quiet > "$OUT/$stage.eval2.json"
        echo "$stage on ${ALSO[$stage]}: $($PY -c "import json; m=json.load(open('$OUT/$stage.eval2.json'))['metrics']; print({k: v for k, v in m.items() if not isinstance(v, dict)})")"
    fi
done
