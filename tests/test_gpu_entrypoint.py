"""docker/entrypoint.sh: the GPU image's driver decision, with a fake ``nvidia-smi`` on PATH, fake CUDA
forward-compatibility and cuDNN folders, and a fake ``python`` that records how it was started."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")

FAKE_SMI = """#!/bin/sh
# A fake nvidia-smi: the driver of $FAKE_DRIVER (one line per GPU), the header with $FAKE_CUDA, or exit $FAKE_EXIT.
if [ -n "${FAKE_EXIT:-}" ]; then
    echo "Failed to initialize NVML: Driver/library version mismatch"
    exit "$FAKE_EXIT"
fi
case "$*" in
    *--query-gpu=driver_version*) echo "$FAKE_DRIVER"; echo "$FAKE_DRIVER" ;;
    "") echo "| NVIDIA-SMI $FAKE_DRIVER    Driver Version: $FAKE_DRIVER    CUDA Version: $FAKE_CUDA     |" ;;
    *) exit 2 ;;
esac
"""

FAKE_PYTHON = """#!/bin/sh
# A fake python: writes its arguments and the entrypoint's exports as JSON to $FAKE_PYTHON_OUT.
{
    printf '{"argv": ['
    sep=""
    for a in "$@"; do printf '%s"%s"' "$sep" "$a"; sep=", "; done
    printf '], "LD_LIBRARY_PATH": "%s", "fallback": "%s", "driver": "%s", "driver_cuda": "%s", "cudnn": "%s", ' \\
        "${LD_LIBRARY_PATH:-}" "${HIESEG_DEVICE_FALLBACK:-}" "${HIESEG_NVIDIA_DRIVER:-}" \\
        "${HIESEG_NVIDIA_DRIVER_CUDA:-}" "${HIESEG_CUDNN_VERSION:-}"
    printf '"compat": "%s"}\\n' "${HIESEG_CUDA_COMPAT:-}"
} > "$FAKE_PYTHON_OUT"
exit 7
"""


@pytest.fixture()
def host(tmp_path):
    """A fake host: bin/ with nvidia-smi and python, compat/ with a libcuda, cudnn/ with a libcudnn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nvidia-smi", FAKE_SMI), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    compat = tmp_path / "compat"
    compat.mkdir()
    (compat / "libcuda.so.1").symlink_to("libcuda.so.570.124.06")
    (compat / "libcuda.so.570.124.06").write_bytes(b"")
    cudnn = tmp_path / "cudnn"
    cudnn.mkdir()
    (cudnn / "libcudnn.so.9.8.0").write_bytes(b"")
    (cudnn / "libcudnn.so.9").symlink_to("libcudnn.so.9.8.0")
    return tmp_path


def run(host: Path, *args: str, dry: bool = True, smi: str | None = None, **env: str):
    full = {"PATH": f"{host / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(host), "HIESEG_CUDA_COMPAT_DIR": str(host / "compat"),
            "HIESEG_CUDNN_LIB_DIRS": f"{host / 'nowhere'} {host / 'cudnn'}", "HIESEG_IMAGE_CUDA": "12.8.1",
            "FAKE_PYTHON_OUT": str(host / "python.json"), "FAKE_DRIVER": "580.95.05", "FAKE_CUDA": "13.0"}
    if dry:
        full["HIESEG_ENTRYPOINT_DRY_RUN"] = "1"
    if smi is not None:
        full["HIESEG_NVIDIA_SMI"] = smi
    full.update(env)
    proc = subprocess.run(["sh", str(ENTRYPOINT), *args], env=full, capture_output=True, text=True, timeout=60)
    decision = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line) if dry else {}
    return proc, decision


def log_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_new_driver_uses_the_gpu_without_compat(host):
    proc, d = run(host, "--input", "/in")
    assert proc.returncode == 0, proc.stderr
    assert d["decision"] == "gpu" and d["driver"] == "580.95.05" and d["driver_cuda"] == "13.0"
    assert str(host / "compat") not in d["LD_LIBRARY_PATH"] and d["HIESEG_DEVICE_FALLBACK"] == ""
    assert d["exec"] == "python inference.py --input /in"
    lines = log_lines(proc)
    assert len(lines) == 1 and "WARNING" not in lines[0]
    assert re.search(r"NVIDIA driver 580\.95\.05 \(supports CUDA 13\.0\), image CUDA 12\.8\.1, cuDNN 9\.8\.0$",
                     lines[0]), lines[0]


@pytest.mark.parametrize("driver", ["570.26", "570.124.06", "575.51.03"])
def test_driver_at_or_above_the_minimum_is_new_enough(host, driver):
    assert run(host, FAKE_DRIVER=driver)[1]["decision"] == "gpu"


def test_old_driver_with_compat_prepends_the_compat_dir(host):
    proc, d = run(host, FAKE_DRIVER="535.183.01", FAKE_CUDA="12.2", LD_LIBRARY_PATH="/usr/local/nvidia/lib64")
    assert d["decision"] == "compat"
    assert d["LD_LIBRARY_PATH"] == f"{host / 'compat'}:/usr/local/nvidia/lib64"
    assert d["HIESEG_DEVICE_FALLBACK"] == "" and d["exec"] == "python inference.py"
    lines = log_lines(proc)
    assert len(lines) == 2 and not any("WARNING" in line for line in lines)
    assert "forward-compatibility libraries" in lines[0] and "535.183.01" in lines[0] and ">= 570.26" in lines[0]
    assert "NVIDIA driver 535.183.01 (supports CUDA 12.2)" in lines[1] and "forward compatibility on" in lines[1]


def test_old_driver_with_compat_and_empty_library_path(host):
    _, d = run(host, FAKE_DRIVER="470.256.02", FAKE_CUDA="11.4")
    assert d["decision"] == "compat" and d["LD_LIBRARY_PATH"] == str(host / "compat")


def test_old_driver_without_compat_falls_back_to_cpu_loudly(host):
    shutil.rmtree(host / "compat")
    proc, d = run(host, "--output", "/out", FAKE_DRIVER="535.183.01", FAKE_CUDA="12.2")
    assert proc.returncode == 0
    assert d["decision"] == "cpu" and d["HIESEG_DEVICE_FALLBACK"] == "cpu"
    assert d["exec"] == "python inference.py --output /out --device cpu"
    lines = log_lines(proc)
    assert len(lines) == 1 and " WARNING " in lines[0] and "GPU NOT USED" in lines[0]
    assert "535.183.01" in lines[0] and "no CUDA forward-compatibility libraries" in lines[0]


def test_compat_not_newer_than_the_driver_does_not_help(host):
    """The compat libcuda helps only when newer than the host's driver (as the AWS DLC entrypoints check)."""
    for lib in (host / "compat").iterdir():
        lib.unlink()
    (host / "compat" / "libcuda.so.530.30.02").write_bytes(b"")
    proc, d = run(host, FAKE_DRIVER="535.183.01")
    assert d["decision"] == "cpu" and "is not newer" in proc.stderr


def test_no_nvidia_smi_is_cpu_with_one_quiet_line(host):
    proc, d = run(host, "--input", "/in", smi=str(host / "absent" / "nvidia-smi"))
    assert proc.returncode == 0
    assert d["decision"] == "none" and d["HIESEG_DEVICE_FALLBACK"] == "cpu"
    assert d["exec"] == "python inference.py --input /in"  # auto picks CPU (or OpenVINO) by itself
    lines = log_lines(proc)
    assert len(lines) == 1 and "WARNING" not in lines[0] and "nvidia-smi not found" in lines[0]
    # test_run.sh requires the CPU to be named in exactly one line of the log: the runtime's own
    assert not re.search(r"running on cpu|CPUExecutionProvider", proc.stderr, re.I)


def test_nvidia_smi_failing_falls_back_to_cpu_loudly(host):
    proc, d = run(host, FAKE_EXIT="9")
    assert proc.returncode == 0
    assert d["decision"] == "cpu" and d["HIESEG_DEVICE_FALLBACK"] == "cpu"
    assert d["exec"] == "python inference.py --device cpu"
    lines = log_lines(proc)
    assert len(lines) == 1 and " WARNING " in lines[0] and "exit 9" in lines[0] and "NVML" in lines[0]
    assert not re.search(r"running on cpu|CPUExecutionProvider", proc.stderr, re.I)


def test_unparsable_driver_falls_back(host):
    proc, d = run(host, FAKE_DRIVER="No devices were found")
    assert d["decision"] == "cpu" and "GPU NOT USED" in proc.stderr


@pytest.mark.parametrize("device", [["--device", "cuda"], ["--device=cuda:1"], ["--device", "cpu"]])
def test_a_device_the_user_chose_is_kept(host, device):
    proc, d = run(host, *device, FAKE_EXIT="9")
    assert d["decision"] == "cpu" and d["exec"] == "python inference.py " + " ".join(device)
    assert "GPU NOT USED" in proc.stderr


def test_the_multi_case_cli_goes_through_the_same_check(host):
    _, d = run(host, "hieseg", "predict", "/in", "/out", FAKE_EXIT="9")
    assert d["exec"] == "python -m hieseg predict /in /out --device cpu"
    _, d = run(host, "hieseg", "merge", "a", FAKE_EXIT="9")
    assert d["exec"] == "python -m hieseg merge a"  # only predict has --device
    _, d = run(host, "hieseg", "predict", "/in", "/out")
    assert d["exec"] == "python -m hieseg predict /in /out"


def test_cpu_variant_skips_the_check(host):
    proc, d = run(host, "--input", "/in", HIESEG_IMAGE_VARIANT="cpu", FAKE_EXIT="9")
    assert d["decision"] == "skipped" and d["exec"] == "python inference.py --input /in"
    assert d["HIESEG_DEVICE_FALLBACK"] == "" and log_lines(proc) == []


def test_cuda_release_outside_the_table_trusts_the_driver(host):
    proc, d = run(host, HIESEG_IMAGE_CUDA="14.1", FAKE_DRIVER="535.183.01")
    assert d["decision"] == "gpu" and "not in the entrypoint's driver table" in proc.stderr


def test_cudnn_unknown_without_the_library(host):
    shutil.rmtree(host / "cudnn")
    proc, d = run(host)
    assert d["cudnn"] == "unknown" and proc.stderr.rstrip().endswith("cuDNN unknown")


@pytest.mark.parametrize("env, argv, fallback, ld_has_compat", [
    ({}, ["inference.py", "--input", "/in"], "", False),
    ({"FAKE_DRIVER": "535.183.01", "FAKE_CUDA": "12.2"}, ["inference.py", "--input", "/in"], "", True),
    ({"FAKE_EXIT": "9"}, ["inference.py", "--input", "/in", "--device", "cpu"], "cpu", False),
])
def test_it_execs_python_with_the_exports(host, env, argv, fallback, ld_has_compat):
    """Not a dry run: the fake python sees the arguments and the environment the runtime will see."""
    proc, _ = run(host, "--input", "/in", dry=False, **env)
    assert proc.returncode == 7, proc.stderr  # the fake python's status: exec'd, not wrapped
    seen = json.loads((host / "python.json").read_text())
    assert seen["argv"] == argv and seen["fallback"] == fallback
    assert (str(host / "compat") in seen["LD_LIBRARY_PATH"]) is ld_has_compat
    assert seen["compat"] == (str(host / "compat") if ld_has_compat else "")
    if "FAKE_EXIT" not in env:
        assert seen["driver"] == env.get("FAKE_DRIVER", "580.95.05") and seen["cudnn"] == "9.8.0"


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    subprocess.run(["shellcheck", "-s", "sh", str(ENTRYPOINT)], check=True)


def test_entrypoint_is_executable_and_parses():
    assert ENTRYPOINT.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


def test_dockerfile_wires_the_entrypoint():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY .*docker/entrypoint\.sh", text, re.M)
    final = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r'^ENTRYPOINT \["/opt/app/docker/entrypoint\.sh"\]', final, re.M)
    assert "HIESEG_IMAGE_VARIANT" in final
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!docker/entrypoint.sh" in ignore


def test_the_report_names_the_driver_the_entrypoint_read(monkeypatch):
    """A CUDA run's report carries the entrypoint's driver / CUDA / cuDNN reading (hieseg.engine.providers)."""
    from hieseg.engine.providers import gpu_versions

    monkeypatch.setenv("HIESEG_NVIDIA_DRIVER", "535.183.01")
    monkeypatch.setenv("HIESEG_NVIDIA_DRIVER_CUDA", "12.2")
    monkeypatch.setenv("HIESEG_CUDNN_VERSION", "9.8.0")
    monkeypatch.setenv("HIESEG_CUDA_COMPAT", "/usr/local/cuda/compat")
    assert gpu_versions() == {"driver": "535.183.01", "driver_cuda": "12.2", "cudnn": "9.8.0", "forward_compat": True}
