# CPU image by default; CUDA image with:
#   docker build --build-arg BASE=nvidia/cuda:12.8.0-runtime-ubuntu24.04 \
#                --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" -t textworker:cuda .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TEXTWORKER_MODELS_DIR=/models
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip && rm -rf /var/lib/apt/lists/*)) \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN pip install --no-cache-dir ${TORCH}
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
COPY pipelines ./pipelines
RUN pip install --no-cache-dir . && textworker models build-defaults --dir /models --quiet
USER 65534
ENTRYPOINT ["textworker"]
CMD ["demo", "--database-url", "sqlite:////tmp/demo.db"]
