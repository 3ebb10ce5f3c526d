#!/usr/bin/env bash
# GPU proof in one prepared command: the CUDA provider really runs every member (no silent CPU fallback), masks
# and probabilities match the CPU provider on the sample and synthetic cases, the ensemble is timed, and fp16
# members are tried with the parity gate (<= 1e-3 probability, identical masks). Logic: benchmarks/device_check.py.
#
#   benchmarks/device_check.sh                  # on the CUDA machine; JSON to $OUT/device_check.json (or .cache/)
#   benchmarks/device_check.sh --provider cpu   # dry run with the CPU provider on both sides (any machine)
#   extra arguments go to device_check.py (--repeats N, --model DIR, --threads N)
#
# ## Bringing onnxruntime-gpu to the device machine
# The device machine has python3 with torch (CUDA), numpy, scipy, onnx and a CPU onnxruntime, but no
# onnxruntime-gpu and no SimpleITK (device_check.py needs none), and nothing outside it can be reached. One call
# carries at most 64 MiB, and the cp312 manylinux wheel of onnxruntime-gpu==1.24.4 is ~255 MB, so it travels in
# parts, one part per consecutive call while the machine stays warm (ignored build outputs are kept between calls):
#
#   # here (a machine with the registry): download, split into <= 60 MB parts in the git-ignored .cache/ortgpu/
#   mkdir -p .cache/ortgpu && cd .cache/ortgpu
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 onnxruntime-gpu==1.24.4 -d .
#   sha256sum onnxruntime_gpu-*.whl > wheel.sha256 && split -b 60000000 -d onnxruntime_gpu-*.whl part- && rm *.whl
#   cd ../..
#   # device calls (run tool), one part each, while the machine is warm; each call stashes its part in
#   # .cache/ortgpu-stash/ on the device, which the next calls keep (it is git-ignored and never carried back):
#   run(command="mkdir -p .cache/ortgpu-stash && cp .cache/ortgpu/* .cache/ortgpu-stash/", carry=[".cache/ortgpu/part-00", ".cache/ortgpu/wheel.sha256"])
#   run(command="cp .cache/ortgpu/* .cache/ortgpu-stash/", carry=[".cache/ortgpu/part-01"])
#   ... (part-02 .. part-04)
#   run(command="benchmarks/device_check.sh", timeout_s=...)   # joins, verifies, installs, then checks
#
# This script joins .cache/ortgpu-stash/part-* (or .cache/ortgpu/part-* when they are all here), checks the
# wheel's sha256, and installs it with --no-deps into .cache/venv-gpu (a venv over the system site-packages, so
# its onnxruntime-gpu shadows the system's CPU onnxruntime; numpy, protobuf, ... come from the system). CUDA 12 and
# cuDNN 9 libraries come from torch's nvidia-* wheels (device_check.py imports torch and calls
# onnxruntime.preload_dlls()); a torch built for another CUDA major shows as a failed placement check.
set -euo pipefail
cd "$(dirname "$0")/.."
provider=cuda
for arg in "$@"; do
  if [[ "$arg" == cpu || "$arg" == --provider=cpu ]]; then provider=cpu; fi
done
out_dir="${OUT:-.cache}"
python="${PYTHON:-python3}"

if [[ "$provider" == cuda ]]; then
  venv=.cache/venv-gpu
  if ! "$venv/bin/python" -c 'import onnxruntime as o; assert "CUDAExecutionProvider" in o.get_available_providers()' 2>/dev/null; then
    parts_dir=.cache/ortgpu-stash
    ls "$parts_dir"/part-* >/dev/null 2>&1 || parts_dir=.cache/ortgpu
    ls "$parts_dir"/part-* >/dev/null 2>&1 || { echo "device_check: no onnxruntime-gpu parts in .cache/ortgpu-stash or .cache/ortgpu (see the header of $0)" >&2; exit 2; }
    [[ -f "$parts_dir/wheel.sha256" ]] || { echo "device_check: $parts_dir/wheel.sha256 is missing" >&2; exit 2; }
    wheel_name="$(awk '{print $2}' "$parts_dir/wheel.sha256")"
    mkdir -p .cache/ortgpu-wheel
    cat "$parts_dir"/part-* > ".cache/ortgpu-wheel/$wheel_name"
    (cd .cache/ortgpu-wheel && sha256sum -c "../../$parts_dir/wheel.sha256") \
      || { echo "device_check: the joined wheel fails its sha256 (a part missing or truncated?): $(ls "$parts_dir")" >&2; exit 2; }
    "$python" -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install --quiet --no-deps --no-index ".cache/ortgpu-wheel/$wheel_name"
  fi
  python="$venv/bin/python"
fi
mkdir -p "$out_dir"
echo "device_check: provider $provider, python $python, result $out_dir/device_check.json" >&2
exec "$python" benchmarks/device_check.py --out "$out_dir/device_check.json" "$@"
