#!/usr/bin/env bash
# The GPU checks as one script for a lent GPU machine, after benchmarks/gpu_pack.sh has filled .gpu/.
#
# 1. tests/gpu: training, every stage type and the engine into SQLite on the GPU, against the CPU;
# 2. benchmarks/gpu_check.sh twice: a RoBERTa-base-sized classifier in bf16 against a batched transformers
#    pipeline() and the bf16 roofline, on SST-2 train texts (short) and on AG News test texts (the CPU
#    figures' workload), best of ROUNDS interleaved rounds.
# Results go to $OUT (the device tool's folder; benchmarks/results elsewhere): machine.txt, gpu_tests.log,
# gpu_tests.xml, gpu_check_sst2.json, gpu_check_agnews.json, gpu_check.log. Exits non-zero if any part failed,
# after running them all.
#   DOCS    documents per bench (default 20000)    ROUNDS  bench rounds (default 3)
#   PY      python (default python3, the image's)  GPU_CHECK_ALLOW_CPU=1 with TEXTWORKER_GPU_TESTS_DEVICE=cpu: a dry run here
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PY:-python3}
DOCS=${DOCS:-20000}
ROUNDS=${ROUNDS:-3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT"
status=0

if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl \
    || { echo "gpu_device: the packed wheels did not install" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_device: no .gpu/wheels (run benchmarks/gpu_pack.sh here and carry .gpu); using what is installed" >&2
fi

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi: not found"
  "$PY" -c "import platform, torch, transformers; print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| transformers', transformers.__version__)"
  lscpu 2>/dev/null | grep -E "^(Model name|CPU\(s\))"
} 2>&1 | tee "$OUT/machine.txt"

echo "gpu_device: tests/gpu" >&2
"$PY" -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" -rA --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

: > "$OUT/gpu_check.log"
for pair in sst2:.gpu/data/sst2/train.tsv agnews:.gpu/data/ag_news/test.tsv; do
  name=${pair%%:*} texts=${pair#*:}
  echo "gpu_device: gpu_check on $name" >&2
  PY=$PY OUT=$OUT DOCS=$DOCS ROUNDS=$ROUNDS NAME="gpu_check_$name" TEXTS=$texts bash benchmarks/gpu_check.sh 2>&1 | tee -a "$OUT/gpu_check.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "gpu_device: done, status $status" >&2
exit $status
