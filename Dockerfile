# VITAL inference service on a CUDA runtime. Build: `make docker` (or docker build -t vital .).
# Run:   docker run --gpus all -p 8000:8000 -v $PWD/bundles/my-bundle:/models/bundle:ro vital
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# 1: add the Ray extra (vital serve --ray, vital batch --ray; the image docker/rayservice.yaml runs):
#    docker build --build-arg WITH_RAY=1 -t vital:ray .
ARG WITH_RAY=0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    VITAL_HOST=0.0.0.0 \
    VITAL_PORT=8000 \
    VITAL_DEVICE=cuda \
    VITAL_DTYPE=bfloat16 \
    VITAL_BUNDLE=/models/bundle \
    VITAL_INDEX_PATH=/index

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin vital

WORKDIR /app

# Dependencies first (a layer that changes only with pyproject.toml): CUDA torch, then the project's
# dependencies with the GPU extra (faiss-gpu; never together with faiss-cpu) and the serving extra.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && mkdir -p vital_core index_builder training server \
    && touch vital_core/__init__.py index_builder/__init__.py training/__init__.py server/__init__.py \
    && pip install ".[gpu,serve]" \
    && if [ "${WITH_RAY}" = "1" ]; then pip install ".[gpu,serve,ray]"; fi \
    && pip uninstall -y vital \
    && rm -rf vital_core index_builder training server

# Then the code (small, changes often).
COPY vital_core ./vital_core
COPY index_builder ./index_builder
COPY training ./training
COPY server ./server
# hadolint ignore=DL3013
RUN pip install --no-deps . && mkdir -p /models /index && chown 10001:10001 /models /index

VOLUME ["/models", "/index"]
USER 10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]

ENTRYPOINT ["vital", "serve"]
