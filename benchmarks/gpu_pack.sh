#!/usr/bin/env bash
# Pack what textworker's GPU checks need and a lent GPU machine lacks into .gpu/ (ignored by git).
#
# That machine (Python 3.12 with its own torch, transformers, tokenizers, onnxruntime, numpy, pyyaml,
# pytest, prometheus-client, sacrebleu...) reaches no package index and sees no ../shared/data, so
# both travel with the working tree. Run this here, then on the device machine, carrying ".gpu":
#     bash benchmarks/gpu_device.sh
# .gpu/wheels  the Python packages its image lacks, at the versions installed in this checkout's .venv
#              (what the tests ran against), built for its Python
# .gpu/data    SST-2 train and AG News test from the shared data sets, for benchmarks/gpu_check.sh
# Ray is not packed: its wheel alone is over the 64 MiB a device call may carry, so the GPU checks run
# the stages in-process (Ray's GPU placement is tested on CPUs: tests/unit/test_serving_placement.py,
# tests/integration/test_ray_runtime.py).
#   PY        the python whose installed versions are pinned (default .venv/bin/python)
#   PYVER     the GPU machine's Python (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
SHARED=${TEXTWORKER_SHARED_DATA:-../shared/data}
PACKAGES=(sqlalchemy alembic mako tenacity starlette pydantic pydantic-core annotated-types typing-inspection typing-extensions)

grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/data/sst2 .gpu/data/ag_news
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "gpu_pack: $name is not installed in $PY (run make install first)" >&2; exit 1; }
  pins+=("$name==$version")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${platforms[@]}" \
  -d .gpu/wheels "${pins[@]}" 2> >(grep -v "^WARNING: Location" >&2)
for file in sst2/train.tsv ag_news/test.tsv; do
  if [ -f "$SHARED/$file" ]; then cp "$SHARED/$file" ".gpu/data/$file"; else echo "gpu_pack: no $SHARED/$file; gpu_check.sh will cycle the seed texts" >&2; fi
done
du -sh .gpu | sed 's/^/gpu_pack: /'
find .gpu -type f | sort
