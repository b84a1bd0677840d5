# textworker image. CPU build (default):
#   docker build -t textworker:cpu .
# CUDA build (the same code; torch from the CUDA 12.8 wheel index, on an NVIDIA base):
#   docker build --build-arg BASE=nvidia/cuda:12.8.0-runtime-ubuntu24.04 \
#                --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" -t textworker:cuda .
# Without access to an image registry: infra/container/bootstrap-base.sh makes a Debian base
# locally and infra/container/smoke.sh builds this file on it with podman (docs/deployment.md).
#
# The first stage builds the wheel; the image installs only the wheel (no source tree).
# /app is a starter project (`textworker init`): pipelines/*.yaml and data/. The default
# models are built into /models, readable by the unprivileged user the image runs as
# (safetensors files are written owner-only). The image doubles as a Ray node image for KubeRay
# (infra/kuberay/): `ray` is on PATH and wget is installed for KubeRay's probes.
ARG BASE=python:3.11-slim
ARG BUILDER=python:3.11-slim

FROM ${BUILDER} AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY worker ./worker
COPY schemas ./schemas
COPY pipelines ./pipelines
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir "setuptools>=77" \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /dist .

FROM ${BASE}
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# DL3064 reads TOKENIZERS_PARALLELISM as a secret ("TOKEN"); it is a tokenizers switch
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TEXTWORKER_MODELS_DIR=/models \
    HOME=/tmp HF_HOME=/tmp/hf HF_HUB_DISABLE_TELEMETRY=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-pip) \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index TORCH names, so installing the wheel finds it satisfied
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ${TORCH}
COPY --from=wheel /dist/ /tmp/dist/
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /tmp/dist/textworker-*.whl \
 && rm -rf /tmp/dist \
 && textworker models build-defaults --dir /models --quiet \
 && chmod -R a+rX /models \
 && textworker init /app --quiet \
 && chown 65534:65534 /app
WORKDIR /app
USER 65534
EXPOSE 8000
ENTRYPOINT ["textworker"]
CMD ["demo", "--database-url", "sqlite:////tmp/demo.db"]
