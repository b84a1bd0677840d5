# textworker image. CPU build (default):
#   docker build -t textworker:cpu .
# CUDA build (the same code; torch from the CUDA 12.8 wheel index, on an NVIDIA base):
#   docker build --build-arg BASE=nvidia/cuda:12.8.0-runtime-ubuntu24.04 \
#                --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" -t textworker:cuda .
# The image doubles as a Ray node image for KubeRay (infra/kuberay/): `ray` is on PATH and
# wget is installed for KubeRay's probes. Default models are built into /models.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TEXTWORKER_MODELS_DIR=/models \
    HOME=/tmp HF_HOME=/tmp/hf HF_HUB_DISABLE_TELEMETRY=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-pip) \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# torch first, from the index TORCH names, so `pip install .` finds it satisfied
RUN pip install --no-cache-dir ${TORCH}
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
COPY pipelines ./pipelines
RUN pip install --no-cache-dir . && textworker models build-defaults --dir /models --quiet
USER 65534
EXPOSE 8000
ENTRYPOINT ["textworker"]
CMD ["demo", "--database-url", "sqlite:////tmp/demo.db"]
