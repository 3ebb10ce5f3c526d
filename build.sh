#!/usr/bin/env bash
# Build the inference image. Prepares the offline wheelhouse (scripts/make_wheelhouse.sh) when it is missing or
# stale, then `docker build`. Tags: hieseg:<version>[-cpu] and hieseg:latest[-cpu], version from hieseg/version.py.
#
#   ./build.sh                                   # the submission image: CUDA 12.8 + cuDNN 9 base, onnxruntime-gpu
#   BASE_IMAGE="$LOCAL_BASE_IMAGE" ./build.sh    # same dependencies on the local Debian base (no GPU here; CI)
#   VARIANT=cpu ./build.sh                       # onnxruntime (CPU) instead of onnxruntime-gpu: smaller, CPU only
#   MODEL_DIR=/tmp/candidate ./build.sh          # bake another model folder instead of model/
#   MODEL_DIR=none ./build.sh                    # no model baked in (hieseg:<version>-nomodel): the model comes
#                                                # from Grand Challenge's model tarball at /opt/ml/model (export.sh)
#   ./build.sh --no-cache                        # extra arguments go to docker build
#
# Environment: BASE_IMAGE (default: the Dockerfile's CUDA base), VARIANT (gpu|cpu, default gpu), IMAGE (repository
# name, default hieseg), PYTHON_VERSIONS (CPython(s) to fetch wheels for; default: probed from the base image when
# it is present locally, 3.12 for the default Ubuntu 24.04 CUDA base), DOCKER (default docker).
# Tags: <version>[-cpu] and latest[-cpu], plus <version>-model-<model version>-<manifest sha256, 12>[-cpu]; with
# MODEL_DIR=none only <version>-nomodel[-cpu] and latest-nomodel[-cpu]. OCI labels: the code version and git
# revision, the model's name, version and manifest sha256. Prints the built tag as the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")"
variant="${VARIANT:-gpu}"
case "$variant" in gpu) suffix="" ;; cpu) suffix="-cpu" ;;
  *) echo "build.sh: VARIANT must be gpu or cpu" >&2; exit 2 ;; esac
docker="${DOCKER:-docker}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/version.py)"
[[ -n "$version" ]] || { echo "build.sh: no __version__ in hieseg/version.py" >&2; exit 1; }
image="${IMAGE:-hieseg}"

# The model baked in: model/ by default; MODEL_DIR=/some/folder bakes another one (staged into build/model, which
# is git-ignored, because the build context is this folder), e.g. a candidate ensemble or a toy model in CI.
model_dir="model"
if [[ "${MODEL_DIR:-}" == none ]]; then
  # An empty model folder (the Dockerfile's COPY needs one): the image then reads /opt/ml/model or --model.
  rm -rf build/model && mkdir -p build/model
  echo "No model is baked into this image (MODEL_DIR=none): mount one at /opt/ml/model or pass --model." \
    > build/model/NO_MODEL.txt
  model_dir="build/model"
elif [[ -n "${MODEL_DIR:-}" ]]; then
  src="$(cd "$MODEL_DIR" && pwd)"
  if [[ "$src" != "$PWD/model" ]]; then
    rm -rf build/model && mkdir -p build && cp -r "$src" build/model
    model_dir="build/model"
  fi
fi
if [[ "${MODEL_DIR:-}" != none && ! -f "$model_dir/manifest.json" ]]; then
  echo "build.sh: $model_dir/manifest.json is missing: the image bakes in the model (manifest + ONNX files)." >&2
  echo "          Export the trained ensemble to model/ first, or set MODEL_DIR." >&2
  exit 1
fi
# Wheels for the CPython the image will run: python3 of the base if it has one, else what its apt installs.
if [[ -z "${PYTHON_VERSIONS:-}" ]]; then
  base="${BASE_IMAGE:-$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)}"
  pv=""
  if "$docker" image inspect "$base" >/dev/null 2>&1; then
    pv="$("$docker" run --rm --network none --entrypoint sh "$base" -c \
      'if command -v python3 >/dev/null; then python3 -c "import sys; print(\"%d.%d\" % sys.version_info[:2])";
       else . /etc/os-release; echo "$ID-$VERSION_ID"; fi' 2>/dev/null || true)"
    case "$pv" in
      3.*) ;;
      debian-12) pv=3.11 ;; debian-13) pv=3.13 ;; ubuntu-24.04) pv=3.12 ;;
      ubuntu-22.04) echo "build.sh: Ubuntu 22.04 has Python 3.10; numpy 2.4 needs >= 3.11: use an ubuntu24.04 base" >&2; exit 1 ;;
      *) pv="" ;;
    esac
  elif [[ "$base" == *ubuntu24.04* ]]; then
    pv=3.12
  fi
  export PYTHON_VERSIONS="${pv:-3.11 3.12}"
fi
scripts/make_wheelhouse.sh "$variant"

# The model's identity for tags and labels: its manifest's name and version, and the sha256 of manifest.json
# (which pins every member's sha256), exactly as the runtime reports it in each case report.
if [[ "${MODEL_DIR:-}" == none ]]; then
  model_name=none model_version=none model_sha=none
  tag="$image:$version-nomodel$suffix"
  tags=(-t "$tag" -t "$image:latest-nomodel$suffix")
else
  model_sha="$(sha256sum "$model_dir/manifest.json" | cut -d' ' -f1)"
  model_name="$(sed -n 's/^  "name": *"\([^"]*\)".*/\1/p' "$model_dir/manifest.json" | head -1)"
  model_version="$(sed -n 's/^  "version": *"\([^"]*\)".*/\1/p' "$model_dir/manifest.json" | head -1)"
  tag="$image:$version$suffix"
  model_tag="$(echo "$version-model-${model_version:-unknown}-${model_sha:0:12}" | tr -c 'A-Za-z0-9_.\n-' '_')"
  tags=(-t "$tag" -t "$image:latest$suffix" -t "$image:$model_tag$suffix")
fi
args=(--build-arg "VARIANT=$variant" --build-arg "MODEL_DIR=$model_dir" "${tags[@]}"
      --label "org.opencontainers.image.version=$version"
      --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
      --label "org.opencontainers.image.title=hieseg"
      --label "org.opencontainers.image.licenses=Apache-2.0"
      --label "org.opencontainers.image.description=HIE lesion segmentation (BONBID-HIE); research use, not a medical device"
      --label "org.hieseg.model.name=${model_name:-unknown}"
      --label "org.hieseg.model.version=${model_version:-unknown}"
      --label "org.hieseg.model.manifest-sha256=$model_sha")
if [[ -n "${BASE_IMAGE:-}" ]]; then
  args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
echo "build.sh: building $tag (variant $variant, base ${BASE_IMAGE:-Dockerfile default}, model $model_dir: ${model_name} ${model_version} ${model_sha:0:12})" >&2
start=$(date +%s)
"$docker" build "${args[@]}" "$@" . >&2
echo "build.sh: built $tag in $(( $(date +%s) - start )) s; size $("$docker" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')" >&2
echo "$tag"
