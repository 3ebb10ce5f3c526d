#!/usr/bin/env bash
# Build the inference image. Prepares the offline wheelhouse (scripts/make_wheelhouse.sh) when it is missing or
# stale, then `docker build`. Tags: hieseg:<version>[-cpu] and hieseg:latest[-cpu], version from hieseg/__init__.py.
#
#   ./build.sh                                   # the submission image: CUDA 12.8 + cuDNN 9 base, onnxruntime-gpu
#   BASE_IMAGE="$LOCAL_BASE_IMAGE" ./build.sh    # same dependencies on the local Debian base (no GPU here; CI)
#   VARIANT=cpu ./build.sh                       # onnxruntime (CPU) instead of onnxruntime-gpu: smaller, CPU only
#   ./build.sh --no-cache                        # extra arguments go to docker build
#
# Environment: BASE_IMAGE (default: the Dockerfile's CUDA base), VARIANT (gpu|cpu, default gpu), IMAGE (repository
# name, default hieseg), PYTHON_VERSIONS (wheels to fetch, default "3.11 3.12"), DOCKER (default docker).
# Prints the built tag as the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")"
variant="${VARIANT:-gpu}"
case "$variant" in gpu) suffix="" ;; cpu) suffix="-cpu" ;; *) echo "build.sh: VARIANT must be gpu or cpu" >&2; exit 2 ;; esac
docker="${DOCKER:-docker}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/__init__.py)"
[[ -n "$version" ]] || { echo "build.sh: no __version__ in hieseg/__init__.py" >&2; exit 1; }
image="${IMAGE:-hieseg}"
tag="$image:$version$suffix"

if [[ ! -f model/manifest.json ]]; then
  echo "build.sh: model/manifest.json is missing: the image bakes in model/ (manifest + ONNX files)." >&2
  echo "          Export the trained ensemble to model/ first." >&2
  exit 1
fi
scripts/make_wheelhouse.sh "$variant"

args=(--build-arg "VARIANT=$variant" -t "$tag" -t "$image:latest$suffix"
      --label "org.opencontainers.image.version=$version"
      --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
      --label "org.opencontainers.image.title=hieseg")
if [[ -n "${BASE_IMAGE:-}" ]]; then
  args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
echo "build.sh: building $tag (variant $variant, base ${BASE_IMAGE:-Dockerfile default})" >&2
start=$(date +%s)
"$docker" build "${args[@]}" "$@" . >&2
echo "build.sh: built $tag in $(( $(date +%s) - start )) s; size $("$docker" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')" >&2
echo "$tag"
