# hieseg: the BONBID-HIE Grand Challenge inference image (and the local multi-case runner).
#
# Build with ./build.sh (it prepares the offline wheelhouse first). By hand:
#   scripts/make_wheelhouse.sh gpu && docker build -t hieseg:dev .
#   docker build --build-arg BASE_IMAGE="$LOCAL_BASE_IMAGE" -t hieseg:dev .      # the local Debian base, no GPU
#
# CUDA pairing: onnxruntime-gpu==1.24.4 (requirements.txt) is built for CUDA 12 and cuDNN 9 — the wheel's
# capi/build_and_package_info.py says cuda_version='12.8', libonnxruntime_providers_cuda.so needs
# libcudart.so.12, libcublas(Lt).so.12, libcufft.so.11, libcurand.so.10 and libcudnn.so.9, and its METADATA extras
# name nvidia-*-cu12 and nvidia-cudnn-cu12~=9.0. Hence a CUDA 12.x + cuDNN 9 *runtime* base (12.8 matches the
# build; host driver >= 570 for 12.8, see docs/container.md). onnxruntime-gpu 1.25+ may move to CUDA 13: change
# this base together with that pin. Ubuntu 24.04's python3 is 3.12, Debian bookworm's 3.11: build.sh fetches the
# wheels for the base's CPython (cp311 and cp312 when it cannot tell).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- runtime base: the base image plus a Python that can make venvs, and the non-root user ------------------
FROM ${BASE_IMAGE} AS runtime-base
# Python from the base's package manager only when the base has none (CUDA and plain Debian bases have none).
RUN set -eux; \
    if ! { command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; }; then \
        export DEBIAN_FRONTEND=noninteractive; \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*; \
    fi; \
    python3 --version; \
    if ! id -u hieseg >/dev/null 2>&1; then useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin hieseg; fi

# ---- dependencies: a venv installed offline from the host-made wheelhouse (never reaches the final image) ------
FROM runtime-base AS deps
# gpu -> requirements.txt (onnxruntime-gpu, what ships); cpu -> requirements-cpu.txt (onnxruntime, smaller);
# Both carry native OpenVINO, the CPU engine of --device auto (bf16 where the CPU has native bf16 units).
ARG VARIANT=gpu
COPY requirements.txt requirements-cpu.txt /tmp/build/
COPY scripts/container-constraints.txt /tmp/build/
COPY wheelhouse/${VARIANT}/ /tmp/wheelhouse/
RUN set -eux; \
    case "${VARIANT}" in gpu) req=requirements.txt ;; cpu) req=requirements-cpu.txt ;; \
        *) echo "VARIANT must be gpu or cpu" >&2; exit 2 ;; esac; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/wheelhouse -r "/tmp/build/$req" -c /tmp/build/container-constraints.txt; \
    /opt/venv/bin/python -c "import numpy, scipy, SimpleITK, onnxruntime as ort; import openvino; print('onnxruntime', ort.__version__, ort.get_available_providers(), 'openvino', openvino.__version__)"

# ---- the application files, made world-readable whatever the host's umask was (the image runs as non-root) ------
FROM runtime-base AS app
# The model folder to bake in, relative to the context: model (default) or build/model (build.sh MODEL_DIR=...;
# MODEL_DIR=none stages an empty build/model, for an image whose model comes from Grand Challenge's model tarball
# at /opt/ml/model). build.sh labels the image with the code version and the model's version + manifest sha256.
ARG MODEL_DIR=model
COPY ${MODEL_DIR}/ /opt/app/model/
COPY hieseg/ /opt/app/hieseg/
COPY inference.py /opt/app/
COPY docker/entrypoint.sh /opt/app/docker/
RUN chmod -R u=rwX,go=rX /opt/app && chmod 0755 /opt/app/docker/entrypoint.sh

# ---- the image ------------------------------------------------------------------------------------------------
FROM runtime-base
# The entrypoint checks the host's NVIDIA driver only in the gpu variant (docker/entrypoint.sh).
ARG VARIANT=gpu
ENV HIESEG_IMAGE_VARIANT=${VARIANT}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/opt/app
COPY --from=deps /opt/venv /opt/venv
WORKDIR /opt/app
# Layer order: dependencies above, then the model (changes per training run), then the code (changes most).
# A manifest under /opt/ml/model (Grand Challenge's model tarball) takes precedence over this baked-in copy.
COPY --from=app /opt/app/model/ /opt/app/model/
COPY --from=app /opt/app/hieseg/ /opt/app/hieseg/
COPY --from=app /opt/app/inference.py /opt/app/
COPY --from=app /opt/app/docker/entrypoint.sh /opt/app/docker/
USER hieseg
# `python inference.py "$@"` after the driver check: the host's NVIDIA driver against the image's CUDA (>= 570 for
# 12.8), CUDA forward-compatibility libraries (/usr/local/cuda/compat) for an older one, one log line with driver /
# CUDA / cuDNN, and CPU with one WARNING line where CUDA cannot work. `IMAGE hieseg predict IN OUT` runs the
# multi-case CLI through the same check.
ENTRYPOINT ["/opt/app/docker/entrypoint.sh"]
