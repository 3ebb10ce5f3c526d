#!/bin/sh
# The hieseg image's entrypoint: check the host's NVIDIA driver against the CUDA release of the image, use CUDA
# forward-compatibility libraries when the driver is older, log driver / CUDA / cuDNN in one line, fall back to CPU
# with one loud warning where CUDA cannot work, then `exec python inference.py "$@"` (Grand Challenge's contract).
#
#   docker run IMAGE [inference.py options]          one case, as Grand Challenge runs it
#   docker run IMAGE hieseg predict IN OUT [...]     the multi-case CLI (python -m hieseg), with the same check
#
# It never fails on its own account: no nvidia-smi (no --gpus, or the CPU variant) only means CPU.
# Environment (the overrides exist for tests and unusual images):
#   HIESEG_IMAGE_VARIANT      gpu | cpu (the Dockerfile sets it); not gpu: no driver check at all
#   HIESEG_IMAGE_CUDA         the image's CUDA release (default: $CUDA_VERSION of the nvidia/cuda base, else 12.8)
#   HIESEG_NVIDIA_SMI         the nvidia-smi to run (default: nvidia-smi on PATH)
#   HIESEG_CUDA_COMPAT_DIR    the forward-compatibility libraries (default /usr/local/cuda/compat)
#   HIESEG_CUDNN_LIB_DIRS     where to look for libcudnn.so.<version> (space-separated)
#   HIESEG_ENTRYPOINT_DRY_RUN 1: print the decision (key=value lines) and the command instead of running it
# Exported for the runtime: HIESEG_NVIDIA_DRIVER, HIESEG_NVIDIA_DRIVER_CUDA, HIESEG_CUDA_COMPAT (the compat dir when
# used), HIESEG_CUDNN_VERSION, and HIESEG_DEVICE_FALLBACK=cpu with HIESEG_DEVICE_FALLBACK_REASON where CUDA cannot
# be used (docs/container.md, "GPU requirements"). Tested by tests/test_gpu_entrypoint.py with a fake nvidia-smi.
set -u

# ---- the one table: minimum Linux driver per CUDA release (NVIDIA's CUDA toolkit release notes, "CUDA Toolkit and
# Corresponding Driver Versions"). Only the image's own release is looked up; add a row when the base moves.
min_driver_for_cuda() {
    case "$1" in
        12.4) echo 550.54.14 ;;
        12.6) echo 560.28.03 ;;
        12.8) echo 570.26 ;;
        12.9) echo 575.51.03 ;;
        13.0) echo 580.65.06 ;;
        *) echo "" ;;
    esac
}

log() {  # LEVEL message: one line on stderr, in the runtime's log format
    printf '%s %-7s %s\n' "$(date +%H:%M:%S)" "$1" "hieseg-entrypoint: $2" >&2
}

version_lt() {  # version_lt A B: A < B, numerically per dotted field (570.26 < 570.124.06)
    awk -v a="$1" -v b="$2" 'BEGIN {
        na = split(a, x, "."); nb = split(b, y, "."); n = na > nb ? na : nb
        for (i = 1; i <= n; i++) { xi = (i <= na) ? x[i] + 0 : 0; yi = (i <= nb) ? y[i] + 0 : 0
            if (xi < yi) exit 0; if (xi > yi) exit 1 }
        exit 1 }'
}

major_minor() {
    echo "$1" | sed -n 's/^\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p'
}

run_smi() {  # nvidia-smi ARGS..., bounded: a wedged driver can hang it
    if command -v timeout >/dev/null 2>&1; then
        timeout 20 "$SMI" "$@"
    else
        "$SMI" "$@"
    fi
}

compat_version() {  # the newest libcuda.so.<version> in the compat dir, or nothing
    best=""
    for lib in "$COMPAT_DIR"/libcuda.so.*.*; do
        [ -e "$lib" ] || continue
        v=${lib##*/libcuda.so.}
        if [ -z "$best" ] || version_lt "$best" "$v"; then best=$v; fi
    done
    echo "$best"
}

cudnn_version() {  # from the library's file name (libcudnn.so.9.8.0), else 'unknown'
    for dir in $CUDNN_DIRS; do
        for lib in "$dir"/libcudnn.so.*.*; do
            [ -e "$lib" ] || continue
            echo "${lib##*/libcudnn.so.}"
            return
        done
    done
    echo unknown
}

# ---- the decision: sets DECISION (gpu | compat | cpu | none), REASON, DRIVER, DRIVER_CUDA, COMPAT -------------
decide() {
    DECISION=gpu REASON="" DRIVER="" DRIVER_CUDA=unknown COMPAT=""
    if ! command -v "$SMI" >/dev/null 2>&1; then
        DECISION=none REASON="no NVIDIA GPU in this container (nvidia-smi not found; docker run --gpus all gives one)"
        return
    fi
    out=$(run_smi --query-gpu=driver_version --format=csv,noheader 2>&1)
    status=$?
    if [ "$status" -ne 0 ]; then
        DECISION=cpu REASON="nvidia-smi failed (exit $status: $(echo "$out" | head -n 1)): the NVIDIA driver does not answer"
        return
    fi
    DRIVER=$(echo "$out" | head -n 1 | tr -d ' \r')
    case "$DRIVER" in
        [0-9]*.[0-9]*) ;;
        *) DECISION=cpu REASON="nvidia-smi gave no driver version ('$DRIVER')"; DRIVER=""; return ;;
    esac
    DRIVER_CUDA=$(run_smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)
    [ -n "$DRIVER_CUDA" ] || DRIVER_CUDA=unknown
    need=$(min_driver_for_cuda "$(major_minor "$IMAGE_CUDA")")
    if [ -z "$need" ]; then  # a release outside the table: trust the driver, the runtime still falls back
        REASON="CUDA $IMAGE_CUDA is not in the entrypoint's driver table"
        return
    fi
    if ! version_lt "$DRIVER" "$need"; then
        return
    fi
    compat=$(compat_version)
    if [ -n "$compat" ] && version_lt "$DRIVER" "$compat"; then
        DECISION=compat COMPAT=$COMPAT_DIR
        REASON="driver $DRIVER is older than CUDA $IMAGE_CUDA needs (>= $need): using the CUDA forward-compatibility libraries in $COMPAT_DIR (libcuda $compat)"
        return
    fi
    DECISION=cpu
    if [ -n "$compat" ]; then
        REASON="driver $DRIVER is older than CUDA $IMAGE_CUDA needs (>= $need) and the forward-compatibility libcuda ($compat) is not newer"
    else
        REASON="driver $DRIVER is older than CUDA $IMAGE_CUDA needs (>= $need) and no CUDA forward-compatibility libraries are in $COMPAT_DIR"
    fi
}

has_device_option() {  # whether the user's arguments choose a device
    for arg in "$@"; do
        case "$arg" in
            --device | --device=*) return 0 ;;
        esac
    done
    return 1
}

# ---- main -------------------------------------------------------------------------------------------------------
VARIANT=${HIESEG_IMAGE_VARIANT:-gpu}
IMAGE_CUDA=${HIESEG_IMAGE_CUDA:-${CUDA_VERSION:-12.8}}
SMI=${HIESEG_NVIDIA_SMI:-nvidia-smi}
COMPAT_DIR=${HIESEG_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}
CUDNN_DIRS=${HIESEG_CUDNN_LIB_DIRS:-/usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/local/cuda/lib64 /usr/lib64}

if [ "${1:-}" = hieseg ]; then  # the multi-case CLI
    shift
    set -- -m hieseg "$@"
    DEVICE_ARGS_OK=$([ "${1:-}" = -m ] && [ "${3:-}" = predict ] && echo 1 || echo 0)
else
    set -- inference.py "$@"
    DEVICE_ARGS_OK=1
fi

if [ "$VARIANT" = gpu ]; then
    decide
    CUDNN=$(cudnn_version)
    export HIESEG_NVIDIA_DRIVER="$DRIVER" HIESEG_NVIDIA_DRIVER_CUDA="$DRIVER_CUDA" HIESEG_CUDNN_VERSION="$CUDNN"
    case "$DECISION" in
        gpu | compat)
            if [ "$DECISION" = compat ]; then
                LD_LIBRARY_PATH="$COMPAT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                export LD_LIBRARY_PATH HIESEG_CUDA_COMPAT="$COMPAT"
                log INFO "$REASON"
            elif [ -n "$REASON" ]; then
                log INFO "$REASON"
            fi
            suffix=""
            [ "$DECISION" = compat ] && suffix=", forward compatibility on"
            log INFO "NVIDIA driver $DRIVER (supports CUDA $DRIVER_CUDA), image CUDA $IMAGE_CUDA, cuDNN $CUDNN$suffix"
            ;;
        none)
            export HIESEG_DEVICE_FALLBACK=cpu HIESEG_DEVICE_FALLBACK_REASON="$REASON"
            log INFO "$REASON"  # the runtime says which provider it runs on, in its one line
            ;;
        cpu)
            export HIESEG_DEVICE_FALLBACK=cpu HIESEG_DEVICE_FALLBACK_REASON="$REASON"
            if [ "$DEVICE_ARGS_OK" = 1 ] && ! has_device_option "$@"; then
                set -- "$@" --device cpu
                action="falling back to the CPU (--device cpu), much slower"
            else
                action="the device you chose may fail"
            fi
            log WARNING "GPU NOT USED: $REASON; $action"
            ;;
    esac
fi

if [ "${HIESEG_ENTRYPOINT_DRY_RUN:-0}" = 1 ]; then
    echo "decision=${DECISION:-skipped}"
    echo "driver=${DRIVER:-}"
    echo "driver_cuda=${DRIVER_CUDA:-}"
    echo "cudnn=${CUDNN:-}"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "HIESEG_DEVICE_FALLBACK=${HIESEG_DEVICE_FALLBACK:-}"
    echo "exec=python $*"
    exit 0
fi
exec python "$@"
