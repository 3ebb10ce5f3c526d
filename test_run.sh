#!/usr/bin/env bash
# Run the image the way Grand Challenge does, on test/input (one case in GC layout), and check the result:
# /output/images/hie-lesion-segmentation/overlay.mha exists, is uint8 with values in {0,1}, and has exactly the
# input ADC's size, spacing, origin and direction. Without a GPU it also checks that the log names the CPU in
# one line and that `--device cuda` fails with a clear message (exit 1, one error line, no traceback); with a GPU
# (nvidia-smi works on the host) it runs with --gpus all and checks that the log shows CUDAExecutionProvider in use.
# It also runs the case presented with a Grand Challenge inputs.json (socket list, uuid-named files) and checks that
# the mask is the same.
#
#   ./test_run.sh [IMAGE]                       # default: hieseg:<version>, or hieseg:<version>-cpu with VARIANT=cpu
#   OPT_ML_MODEL=/path/to/model ./test_run.sh   # also mount a model folder at /opt/ml/model (GC's model upload)
#   INPUT=/path/to/gc-input KEEP_OUTPUT=1 TIMEOUT=900 ./test_run.sh   # TIMEOUT: seconds per container run
#
# The checks run inside the image (its SimpleITK), so the host needs only docker.
set -euo pipefail
cd "$(dirname "$0")"
docker="${DOCKER:-docker}"
version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' hieseg/version.py)"
case "${VARIANT:-gpu}" in gpu) suffix="" ;; cpu) suffix="-cpu" ;; *) echo "test_run.sh: VARIANT must be gpu or cpu" >&2; exit 2 ;; esac
image="${1:-${IMAGE:-hieseg}:$version$suffix}"
input="$(cd "${INPUT:-test/input}" && pwd)"
"$docker" image inspect "$image" >/dev/null 2>&1 || { echo "test_run.sh: no image $image (run ./build.sh)" >&2; exit 1; }

out="$(mktemp -d "${TMPDIR:-/tmp}/hieseg-test-run.XXXXXX")"
containers=()
cleanup() {
  for c in "${containers[@]}"; do "$docker" rm -f "$c" >/dev/null 2>&1 || true; done
  if [[ "${KEEP_OUTPUT:-0}" == 1 ]]; then echo "test_run.sh: output kept in $out" >&2; else rm -rf "$out"; fi
}
trap cleanup EXIT
mkdir -p "$out/output" "$out/output-cuda"
chmod -R a+rwx "$out"   # the image runs as a non-root user

# Grand Challenge's runtime restrictions.
flags=(--network none --cap-drop ALL --security-opt no-new-privileges --shm-size 128m --pids-limit 256
       --memory 8g --tmpfs /tmp:rw,nosuid,nodev,mode=1777 -v "$input:/input:ro")
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; flags+=(--gpus all); fi
if [[ -n "${OPT_ML_MODEL:-}" ]]; then flags+=(-v "$(cd "$OPT_ML_MODEL" && pwd):/opt/ml/model:ro"); fi

fail() { echo "test_run.sh: FAIL: $*" >&2; exit 1; }
# `docker run` without --rm, then the exit code from `docker inspect` and an explicit rm: through podman's Docker
# API (this machine, CI) `docker run --rm` reports exit 0 whatever the container returned.
run_container() {  # run_container NAME DOCKER-RUN-ARGS... ; sets $rc
  local name="hieseg-test-$$-$1"; shift
  containers+=("$name")
  timeout "${TIMEOUT:-900}" "$docker" run --name "$name" "$@" && rc=0 || rc=$?
  [[ $rc == 124 ]] && echo "test_run.sh: the container ran longer than ${TIMEOUT:-900} s (TIMEOUT)" >&2
  local state; state="$("$docker" inspect -f '{{.State.ExitCode}}' "$name" 2>/dev/null || echo "")"
  [[ -n "$state" && "$state" != 0 && "$rc" == 0 ]] && rc="$state"
  "$docker" rm -f "$name" >/dev/null 2>&1 || true
}

echo "test_run.sh: $image on $input (GPU: $([[ $gpu == 1 ]] && echo yes || echo no)${OPT_ML_MODEL:+, model $OPT_ML_MODEL at /opt/ml/model})" >&2
start=$(date +%s%N)
run_container gc "${flags[@]}" -v "$out/output:/output" "$image" >"$out/stdout.log" 2>"$out/stderr.log"
ms=$(( ($(date +%s%N) - start) / 1000000 )); seconds="$((ms / 1000)).$(printf %03d $((ms % 1000)))"
sed 's/^/  | /' "$out/stderr.log" >&2
[[ $rc == 0 ]] || fail "the container exited with $rc"
echo "test_run.sh: inference run took ${seconds} s" >&2

# The overlay: exact grid of the input ADC, uint8, values in {0, 1}.
run_container check --network none --entrypoint python -v "$input:/input:ro" -v "$out/output:/output:ro" "$image" -c '
import glob, sys
import numpy as np, SimpleITK as sitk
ref_path = sorted(glob.glob("/input/images/skull-stripped-adc-brain-mri/*.mha"))[0]
out_path = "/output/images/hie-lesion-segmentation/overlay.mha"
ref, out = sitk.ReadImage(ref_path), sitk.ReadImage(out_path)
problems = []
for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
    a, b = getattr(ref, what)(), getattr(out, what)()
    if tuple(a) != tuple(b):
        problems.append(f"{what[3:].lower()} {b} != input {a}")
if out.GetPixelID() != sitk.sitkUInt8:
    problems.append(f"pixel type {out.GetPixelIDTypeAsString()}, not 8-bit unsigned integer")
values = np.unique(sitk.GetArrayViewFromImage(out))
if not set(values.tolist()) <= {0, 1}:
    problems.append(f"values {values[:10].tolist()} not in {{0, 1}}")
if problems:
    print("overlay.mha: " + "; ".join(problems), file=sys.stderr); sys.exit(1)
print(f"overlay.mha OK: size {out.GetSize()}, spacing {out.GetSpacing()}, uint8, values {values.tolist()}, "
      f"{int(sitk.GetArrayViewFromImage(out).sum())} lesion voxels")
' || fail "overlay.mha does not match the input grid"

# The same case the way Grand Challenge's current runtime presents it: /input/inputs.json listing the two sockets,
# each image named after its stored image (a uuid), not after the upload. The mask must be the same.
if [[ ! -f "$input/inputs.json" ]]; then
  gcin="$out/input-inputs-json"
  mkdir -p "$gcin/images/skull-stripped-adc-brain-mri" "$gcin/images/z-score-adc" "$out/output-inputs-json"
  cp "$(ls "$input"/images/skull-stripped-adc-brain-mri/*.mha | head -1)" "$gcin/images/skull-stripped-adc-brain-mri/0f5e2c1a-6b1d-4a8e-9d33-5b1f7c2e9a41.mha"
  cp "$(ls "$input"/images/z-score-adc/*.mha | head -1)" "$gcin/images/z-score-adc/7c9d0e4b-2a3f-4b6c-8e1d-0a9b8c7d6e5f.mha"
  sock() {  # sock SLUG TITLE RELATIVE_PATH PK: one socket object as Grand Challenge serialises it
    printf '{"title": "%s", "description": "", "slug": "%s", "kind": "Image", "pk": %s, "default_value": null, "super_kind": "Image", "relative_path": "%s", "overlay_segments": [], "look_up_table": null}' "$2" "$1" "$4" "$3"
  }
  a="$(sock skull-stripped-adc "Skull Stripped ADC" images/skull-stripped-adc-brain-mri 412)"
  z="$(sock z-score-apparent-diffusion-coefficient-map "Z-score ADC" images/z-score-adc 413)"
  cat > "$gcin/inputs.json" <<JSON
[{"socket": $a, "interface": $a, "value": null, "file": null, "image": {"pk": "0f5e2c1a-6b1d-4a8e-9d33-5b1f7c2e9a41", "name": "adc.mha"}, "pk": 900412},
 {"socket": $z, "interface": $z, "value": null, "file": null, "image": {"pk": "7c9d0e4b-2a3f-4b6c-8e1d-0a9b8c7d6e5f", "name": "zadc.mha"}, "pk": 900413}]
JSON
  chmod -R a+rwX "$out"
  json_flags=()
  for f in "${flags[@]}"; do [[ "$f" == "$input:/input:ro" ]] && f="$gcin:/input:ro"; json_flags+=("$f"); done
  run_container gc-json "${json_flags[@]}" -v "$out/output-inputs-json:/output" "$image" >/dev/null 2>"$out/stderr-json.log"
  [[ $rc == 0 ]] || { sed 's/^/  | /' "$out/stderr-json.log" >&2; fail "the run with inputs.json exited with $rc"; }
  cmp -s "$out/output/images/hie-lesion-segmentation/overlay.mha" "$out/output-inputs-json/images/hie-lesion-segmentation/overlay.mha" \
    || fail "the run with inputs.json wrote a different overlay.mha than the folder-only run"
  echo "test_run.sh: inputs.json (Grand Challenge's socket list) run: same overlay.mha as the folder-only run" >&2
fi

if [[ $gpu == 0 ]]; then
  # No GPU: the log names the CPU in one line ...
  cpu_lines="$(grep -iE 'running on cpu|CPUExecutionProvider' "$out/stderr.log" | grep -v '^\S*\s*\[[EW]:onnxruntime' || true)"
  [[ -n "$cpu_lines" ]] || fail "the log does not say that it runs on CPU"
  [[ $(printf '%s\n' "$cpu_lines" | wc -l) == 1 ]] || fail "the CPU is reported in more than one line: $cpu_lines"
  echo "test_run.sh: CPU reported: $cpu_lines" >&2
  # ... and --device cuda fails cleanly.
  run_container cuda "${flags[@]}" -v "$out/output-cuda:/output" "$image" --device cuda >/dev/null 2>"$out/cuda.log"
  sed 's/^/  | /' "$out/cuda.log" >&2
  [[ $rc != 0 ]] || fail "--device cuda without a GPU exited 0"
  grep -q 'Traceback' "$out/cuda.log" && fail "--device cuda without a GPU printed a traceback"
  grep -iE 'error.*cuda' "$out/cuda.log" >/dev/null || fail "--device cuda without a GPU: no error line naming CUDA"
  [[ -z "$(ls -A "$out/output-cuda")" ]] || fail "--device cuda without a GPU still wrote output"
  echo "test_run.sh: --device cuda without a GPU fails cleanly (exit $rc)" >&2
fi
if [[ $gpu == 1 ]]; then
  # A GPU was passed in: CUDA must really have run (a CUDA/cuDNN/driver mismatch silently falls back to CPU).
  if grep -iE 'running on cpu' "$out/stderr.log" >/dev/null || ! grep -q 'CUDAExecutionProvider' "$out/stderr.log"; then
    fail "a GPU is present but the log does not show CUDAExecutionProvider in use (see the log above)"
  fi
  echo "test_run.sh: CUDA reported: $(grep -m1 'CUDAExecutionProvider' "$out/stderr.log")" >&2
fi
echo "test_run.sh: PASS ($image)" >&2
