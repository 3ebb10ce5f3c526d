"""The container: Dockerfile contract, build-context allow-list and scripts (static, always run), and a
Grand-Challenge-style run of an already built image (only where a Docker engine answers; skipped otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
SCRIPTS = ["build.sh", "export.sh", "test_run.sh", "scripts/make_wheelhouse.sh"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def _version() -> str:
    return re.search(r'__version__\s*=\s*["\']([^"\']+)', (REPO / "hieseg" / "version.py").read_text()).group(1)


def test_dockerfile_contract():
    ins = _instructions()
    final = _final_stage()
    base = next(rest for word, rest in ins if word == "ARG" and rest.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    assert ins[ins.index(("ARG", base)) + 1][0] == "FROM" and "${BASE_IMAGE}" in ins[ins.index(("ARG", base)) + 1][1]
    assert ("ENTRYPOINT", '["/opt/app/docker/entrypoint.sh"]') in final
    assert ("WORKDIR", "/opt/app") in final
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "/opt/venv/bin" in env
    run = " ".join(rest for word, rest in ins if word == "RUN")
    assert "python3 -m venv /opt/venv" in run and "--no-index" in run
    assert "apt-get install" in run and "python3-venv" in run  # bases without Python
    assert not re.search(r"\btorch\b", DOCKERFILE.read_text().split("FROM", 1)[1])


def test_final_stage_layer_order():
    """Dependencies, then the model, then the code: a code change must not reinstall dependencies."""
    final = [f"{word} {rest}" for word, rest in _final_stage()]

    def index(fragment: str) -> int:
        return next(i for i, line in enumerate(final) if fragment in line)

    assert index("COPY --from=deps /opt/venv") < index("/opt/app/model") < index("/opt/app/hieseg")
    assert index("/opt/app/hieseg") < index("ENTRYPOINT")


def test_cuda_base_matches_onnxruntime_gpu():
    """onnxruntime-gpu 1.19-1.24 on PyPI are built for CUDA 12 + cuDNN 9 (the wheel says cuda_version='12.8')."""
    pin = re.search(r"^onnxruntime-gpu==(\d+)\.(\d+)", (REPO / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt must pin onnxruntime-gpu"
    assert not re.search(r"^onnxruntime==", (REPO / "requirements.txt").read_text(), re.M)
    major, minor = int(pin.group(1)), int(pin.group(2))
    if not (major == 1 and 19 <= minor <= 24):
        pytest.skip(f"onnxruntime-gpu {major}.{minor}: check its CUDA/cuDNN pairing against the base by hand")
    base = next(rest for word, rest in _instructions() if word == "ARG" and rest.startswith("BASE_IMAGE="))
    assert re.search(r"cuda:12\.", base) and "cudnn" in base


def _dockerignore_included(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for negated, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            included = negated
    return included


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negated, re.compile(regex)))
    return patterns


@pytest.mark.parametrize("path, wanted", [
    ("hieseg/__init__.py", True), ("inference.py", True), ("model/manifest.json", True),
    ("model/unet3d_f0.onnx", True), ("build/model/manifest.json", True), ("requirements.txt", True),
    ("wheelhouse/gpu/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", True),
    ("scripts/container-constraints.txt", True),
    (".venv/bin/python", False), (".venv-gpu/lib/x.py", False), (".cache/data/BONBID2023_Train/1ADC_ss/a.mha", False),
    ("training/train.py", False), ("tests/test_io.py", False), (".git/HEAD", False), ("dist/hieseg.tar.gz", False),
    ("hieseg/__pycache__/io.cpython-311.pyc", False), ("model/fold0.pt", False), ("model/sub/fold0.pth", False),
    ("wheelhouse/.tmp-gpu.abc123/x.whl", False), ("README.md", False), ("requirements-dev.txt", False),
])
def test_dockerignore(path, wanted):
    assert _dockerignore_included(path, _dockerignore_patterns()) is wanted


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_executable(script):
    path = REPO / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(path)], check=True)


def _engine_ok() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_built_image_runs_like_grand_challenge():
    """test_run.sh on hieseg:<version> when an engine answers and the image exists (build.sh builds it)."""
    if not _engine_ok():
        pytest.skip("no Docker engine (for podman: eval \"$(../shared/tools/container-engine.sh)\")")
    image = f"hieseg:{_version()}"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.skip(f"no image {image}: run ./build.sh first")
    proc = subprocess.run(["bash", str(REPO / "test_run.sh"), image], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "test_run.sh: PASS" in proc.stderr
