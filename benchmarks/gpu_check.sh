#!/usr/bin/env bash
# GPU check: `textworker bench` with a RoBERTa-base-sized classifier (random weights) on CUDA.
#
# Prints docs/s of textworker's batch run (and of a batched transformers pipeline() on the
# same GPU in bf16) and the fraction of the bf16 roofline: forward FLOPs per document
# against the GPU's measured bf16 matmul peak. Random weights cost the same FLOPs as
# trained ones, so the speed figures hold for a real roberta-base.
#
# Needs: a CUDA build of torch in the environment (`make install TORCH="torch==2.13.0
# --index-url https://download.pytorch.org/whl/cu128"`); nothing is downloaded here.
# Without CUDA it says so and exits 2. Knobs (environment):
#   PY            python with textworker installed (default .venv/bin/python, else python3)
#   DOCS          documents to time (default 20000)
#   TEXTS         a labelled TSV whose texts are cycled into the documents (default: SST-2 train under
#                 $TEXTWORKER_SHARED_DATA, default ../shared/data; the seed texts where it is missing)
#   ROUNDS        bench rounds, interleaved, best of each contender (default 1)
#   NAME          the result's file name, NAME.json (default gpu_check)
#   CONTENDERS    bench contenders (default "textworker hf_batched"; add ray_data, hf_per_doc)
#   BATCH, MAX_TOKENS, MAX_LENGTH   the stage's batching (default 256, 65536, 128)
#   OUT           where the JSON result goes (default benchmarks/results)
#   GPU_CHECK_ALLOW_CPU=1   dry run on CPU (fp32 roofline) to check the script itself; use a small DOCS
# On a lent GPU machine, benchmarks/gpu_device.sh runs this with everything it needs (benchmarks/gpu_pack.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DOCS=${DOCS:-20000}
CONTENDERS=${CONTENDERS:-textworker hf_batched}
BATCH=${BATCH:-256}
MAX_TOKENS=${MAX_TOKENS:-65536}
MAX_LENGTH=${MAX_LENGTH:-128}
RESULTS=${OUT:-benchmarks/results}
ROUNDS=${ROUNDS:-1}
NAME=${NAME:-gpu_check}
mkdir -p "$RESULTS"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && [ "${GPU_CHECK_ALLOW_CPU:-}" != 1 ]; then
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch not importable')); this check needs a GPU" >&2
  exit 2
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU dry run', '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SHARED=${TEXTWORKER_SHARED_DATA:-../shared/data}
TEXTS=${TEXTS:-$SHARED/sst2/train.tsv}

echo "gpu_check: building a RoBERTa-base-sized model with random weights and $DOCS documents" >&2
"$PY" - "$WORK" "$DOCS" "$TEXTS" <<'EOF'
import json, sys
from pathlib import Path
from worker.models.roberta import ROBERTA_BASE_VOCAB, build_roberta
from worker.training.data import load_labelled

work, count, real = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
texts = [t for name in ("sentiment.tsv", "spam.tsv") for t in load_labelled(Path("worker/seed") / name)[0]]
pool = load_labelled(real, limit=count)[0] if real.is_file() else texts
build_roberta(texts, work / "roberta-base", size="base", vocab_size=8000, embedding_rows=ROBERTA_BASE_VOCAB, max_length=512)
with (work / "docs.jsonl").open("w") as out:
    for i in range(count):
        text = pool[i % len(pool)]
        out.write(json.dumps({"id": f"g{i}", "text": text if i < len(pool) else f"{text} ({i // len(pool)})"}) + "\n")
print(f"gpu_check: documents from {real if real.is_file() else 'worker/seed (cycled)'}", file=sys.stderr)
EOF

cat > "$WORK/gpu_check.yaml" <<EOF
version: 1
name: gpu_check
source: {type: file, path: $WORK/docs.jsonl}
stages:
  - name: classify
    type: classify
    model: $WORK/roberta-base
    labels: [negative, positive]
    max_length: $MAX_LENGTH
    batch_size: $BATCH
    max_tokens: $MAX_TOKENS
    resources: {device: cuda, gpus: 1}
sink: {url: "sqlite:///$WORK/gpu_check.db"}
EOF

# shellcheck disable=SC2086  # CONTENDERS is a word list
"$PY" -m worker.cli bench "$WORK/gpu_check.yaml" --stage classify --data "$WORK/docs.jsonl" --limit "$DOCS" \
  --only $CONTENDERS --rounds "$ROUNDS" --json --quiet > "$RESULTS/$NAME.json"

"$PY" - "$RESULTS/$NAME.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"gpu_check: {r['gpu'] or 'CPU dry run'}, {r['parameters'] / 1e6:.0f}M-parameter RoBERTa, {r['docs']} docs, mean {r['mean_tokens']} tokens")
print(f"gpu_check: {r['peak_dtype']} matmul peak {r['matmul_peak_gflops'] / 1000:.1f} TFLOP/s; {r['forward_gflop_per_doc']} GFLOP per document")
for name, rate in r["docs_per_s"].items():
    print(f"gpu_check: {name:<12} {rate:>12.1f} docs/s")
print(f"gpu_check: textworker reaches {100 * r['roofline_fraction']:.2f}% of the {r['peak_dtype']} roofline")
print(f"gpu_check: full result in {sys.argv[1]}")
EOF
