"""hieseg.engine.memory: the container's memory limit (fake cgroup v1 / v2 files), the case estimate and the
refusal's decision table."""

from __future__ import annotations

import resource

import pytest

from hieseg.engine import memory
from hieseg.engine.memory import GIB, MIB, CaseTooLarge
from hieseg.errors import HiesegError, InputError

HUGE = ((300, 512, 512), (0.5, 0.5, 0.5))
REAL = ((23, 128, 128), (4.0, 1.5625, 1.5625))


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---- cgroup files ----------------------------------------------------------------------------------------------


def test_cgroup_v2_limit(tmp_path):
    _write(tmp_path / "memory.max", "8589934592\n")
    assert memory.cgroup_limit_bytes(tmp_path, None) == 8 * GIB


def test_cgroup_v2_max_is_no_limit(tmp_path):
    _write(tmp_path / "memory.max", "max\n")
    assert memory.cgroup_limit_bytes(tmp_path, None) is None


def test_cgroup_v1_limit(tmp_path):
    _write(tmp_path / "memory" / "memory.limit_in_bytes", str(2 * GIB))
    assert memory.cgroup_limit_bytes(tmp_path, None) == 2 * GIB


@pytest.mark.parametrize("value", [2**63 - 4096, 2**63 - 65536, 2**63 - 1, 2**62])
def test_cgroup_v1_near_2_63_is_no_limit(tmp_path, value):
    _write(tmp_path / "memory" / "memory.limit_in_bytes", f"{value}\n")
    assert memory.cgroup_limit_bytes(tmp_path, None) is None


def test_cgroup_absent(tmp_path):
    assert memory.cgroup_limit_bytes(tmp_path, None) is None
    assert memory.cgroup_limit_bytes(tmp_path / "missing", tmp_path / "no-proc-file") is None


@pytest.mark.parametrize("text", ["", "garbage", "-1", "0"])
def test_cgroup_unreadable_values_are_no_limit(tmp_path, text):
    _write(tmp_path / "memory.max", text)
    assert memory.cgroup_limit_bytes(tmp_path, None) is None


def test_cgroup_v2_along_own_path(tmp_path):
    """Without a cgroup namespace the limit sits on the process's own cgroup (and the smallest level wins)."""
    _write(tmp_path / "system.slice" / "memory.max", str(6 * GIB))
    _write(tmp_path / "system.slice" / "job.scope" / "memory.max", "max")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, "0::/system.slice/job.scope\n")
    assert memory.cgroup_limit_bytes(tmp_path, proc) == 6 * GIB
    _write(tmp_path / "system.slice" / "job.scope" / "memory.max", str(3 * GIB))
    assert memory.cgroup_limit_bytes(tmp_path, proc) == 3 * GIB


def test_cgroup_v1_along_own_path(tmp_path):
    _write(tmp_path / "memory" / "memory.limit_in_bytes", str(2**63 - 4096))
    _write(tmp_path / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(4 * GIB))
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, "12:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert memory.cgroup_limit_bytes(tmp_path, proc) == 4 * GIB


def test_cgroup_smallest_of_v1_and_v2(tmp_path):
    _write(tmp_path / "memory.max", str(8 * GIB))
    _write(tmp_path / "memory" / "memory.limit_in_bytes", str(3 * GIB))
    assert memory.cgroup_limit_bytes(tmp_path, None) == 3 * GIB


# ---- the limit: cgroup, rlimit, physical memory ----------------------------------------------------------------


def test_memory_limit_takes_the_smallest(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 16 * GIB)
    monkeypatch.setattr(memory, "rlimit_bytes", lambda: None)
    assert memory.memory_limit(tmp_path, None) == (16 * GIB, "physical memory")
    _write(tmp_path / "memory.max", str(8 * GIB))
    assert memory.memory_limit(tmp_path, None) == (8 * GIB, "cgroup memory limit")
    assert memory.memory_limit_bytes(tmp_path, None) == 8 * GIB
    monkeypatch.setattr(memory, "rlimit_bytes", lambda: 4 * GIB)
    assert memory.memory_limit(tmp_path, None) == (4 * GIB, "rlimit")
    _write(tmp_path / "memory.max", str(64 * GIB))  # a cgroup above the machine's memory: the machine caps it
    monkeypatch.setattr(memory, "rlimit_bytes", lambda: None)
    assert memory.memory_limit_bytes(tmp_path, None) == 16 * GIB


def test_memory_limit_none_when_nothing_is_known(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: None)
    monkeypatch.setattr(memory, "rlimit_bytes", lambda: None)
    assert memory.memory_limit_bytes(tmp_path, None) is None


def test_rlimit(monkeypatch):
    limits = {resource.RLIMIT_AS: (3 * GIB, resource.RLIM_INFINITY),
              resource.RLIMIT_DATA: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)}
    monkeypatch.setattr(memory.resource, "getrlimit", lambda which: limits[which])
    assert memory.rlimit_bytes() == 3 * GIB
    limits[resource.RLIMIT_DATA] = (2 * GIB, 4 * GIB)
    assert memory.rlimit_bytes() == 2 * GIB
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY,) * 2
    assert memory.rlimit_bytes() is None


def test_real_machine_values_are_sane():
    physical = memory.physical_memory_bytes()
    assert physical is None or physical > 256 * MIB
    limit = memory.memory_limit_bytes()
    assert limit is None or 0 < limit <= (physical or limit)


# ---- the estimate --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(memory.CALIBRATION))
def test_estimate_is_above_every_measured_peak(name):
    row = memory.CALIBRATION[name]
    need = memory.estimate_case_bytes(row["shape_zyx"], row["spacing_zyx"])
    assert need >= int(row["peak_mib"]) * MIB, (name, need / MIB)
    assert need <= 3 * int(row["peak_mib"]) * MIB, "so conservative that it refuses what fits"


def test_estimate_huge_case_against_issue_target():
    """Calibrated for issue 24's post-fix target: the huge case runs in <= 2 GiB (measured 1.24-1.42 GiB) and is
    let through a 2 GiB budget; Grand Challenge gives 8 GB."""
    need = memory.estimate_case_bytes(*HUGE)
    assert 1.5 * GIB <= need <= 2 * GIB
    assert memory.estimate_case_bytes(*REAL) <= 2 * GIB  # real cases fit a small container


def test_estimate_grows_with_the_grid_and_spacing():
    small = memory.estimate_case_bytes((20, 128, 128), (4.0, 1.5, 1.5))
    assert memory.estimate_case_bytes((40, 256, 256), (4.0, 1.5, 1.5)) > small
    assert memory.estimate_case_bytes((300, 512, 512), (0.5, 0.5, 0.5)) > memory.estimate_case_bytes(
        (300, 512, 512), (0.5, 0.5, 0.5), on_gpu=True)
    # no credit for the crop: more, never less
    assert memory.estimate_case_bytes(*HUGE, crop_extent_mm=None) > memory.estimate_case_bytes(*HUGE)
    # every term is linear in the native voxels at the least
    big = (600, 1024, 1024)
    assert memory.estimate_case_bytes(big, (0.25,) * 3) >= memory.NATIVE_BYTES_PER_VOXEL * 600 * 1024 * 1024


def _by_kind(grids) -> dict:
    return {tiling.kind: grid for tiling, grid in grids}


def test_member_grids_follow_the_domain_guard():
    grids = _by_kind(memory.member_grids(*HUGE))
    # 0.5 mm runs at 2 / 1.25 / 1.25 mm (2D) and 1.375 mm in-plane (3D), over at most 176 mm of brain box
    assert grids["2d"] == (75, 141, 141) and grids["3d"] == (75, 128, 128)
    assert _by_kind(memory.member_grids(*HUGE, crop_extent_mm=None))["2d"] == (75, 205, 205)
    coarse = _by_kind(memory.member_grids((10, 50, 50), (10.0, 3.0, 3.0)))  # coarser than the domain: refined
    assert coarse["2d"] == (17, 75, 75)
    # 192 mm: the box caps it
    assert _by_kind(memory.member_grids((10, 64, 64), (10.0, 3.0, 3.0)))["2d"] == (17, 88, 88)
    assert _by_kind(memory.member_grids((5, 6, 7), None)) == {"2d": (5, 6, 7), "3d": (5, 6, 7)}


def test_the_estimate_reads_the_bundled_manifest():
    """Tiling, target spacing and spacing range come from model/manifest.json, one Tiling per distinct entry."""
    from hieseg.engine.manifest import load_manifest

    manifest = load_manifest(verify=False)
    model = memory.bundled_memory_model()
    assert model == memory.memory_model(manifest)
    assert model.spacing_min_zyx == manifest.domain.spacing_min_zyx
    assert model.spacing_max_zyx == manifest.domain.spacing_max_zyx
    assert {(t.kind, t.patch_size, t.batch_size) for t in model.tilings} == {
        (m.kind, m.patch_size, m.batch_size) for m in manifest.members}


def _model(patch_3d=(64, 256, 256), batch_2d=16, spacing_3d=1.375) -> "memory.MemoryModel":
    """A model described by hand (two tilings, the default domain's spacing range)."""
    return memory.MemoryModel(
        (memory.Tiling("3d", (None, spacing_3d, spacing_3d), patch_3d, (4, 8, 8), 1),
         memory.Tiling("2d", (None, None, None), (256, 256), (16, 16), batch_2d)),
        (2.0, 1.25, 1.25), (6.0, 2.0, 2.0))


def test_tiles_never_exceed_the_patches():
    for tiling, grid in memory.member_grids((2000, 2000, 2000), (1.0,) * 3, crop_extent_mm=None, model=_model()):
        expected = 64 * 256 * 256 if tiling.kind == "3d" else 16 * 256 * 256
        assert memory.tile_voxels(tiling, grid) == expected


def test_the_estimate_follows_the_manifest_tiling():
    """A model with larger 2D batches or a finer 3D spacing needs more; the same description, the same figure."""
    base = memory.estimate_case_bytes(*HUGE, model=_model())
    assert base == memory.estimate_case_bytes(*HUGE)  # the hand description = the shipped manifest's
    assert memory.estimate_case_bytes(*HUGE, model=_model(batch_2d=64)) > base
    assert memory.estimate_case_bytes(*HUGE, model=_model(spacing_3d=0.75)) > base
    assert memory.estimate_case_bytes(*HUGE, model=_model(patch_3d=(32, 64, 64))) <= base


@pytest.mark.parametrize("shape, spacing", [((0, 1, 1), None), ((1, 2), None), ((2, 2, 2), (1.0, 0.0, 1.0)),
                                            ((2, 2, 2), (1.0, 1.0))])
def test_estimate_rejects_nonsense(shape, spacing):
    with pytest.raises(ValueError):
        memory.estimate_case_bytes(shape, spacing)


# ---- the decision table ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, limit, fits", [
    (REAL, None, True),  # no limit known: never refused
    (REAL, 8 * GIB, True),  # Grand Challenge's default
    (REAL, 2 * GIB, True),
    (REAL, 1 * GIB, False),  # below the model's own resident size
    (HUGE, 8 * GIB, True),
    (HUGE, 4 * GIB, True),
    (HUGE, 2 * GIB, True),  # issue 24's budget: measured 1.24-1.42 GiB
    (HUGE, int(1.5 * GIB), False),
    (((1000, 1024, 1024), (0.2, 0.2, 0.2)), 8 * GIB, False),  # 1 G voxels
    (((1000, 1024, 1024), (0.2, 0.2, 0.2)), 32 * GIB, True),  # Grand Challenge's largest
])
def test_check_fits_decision_table(case, limit, fits):
    shape, spacing = case
    if fits:
        need = memory.check_fits(shape, spacing, limit)
        assert need == memory.estimate_case_bytes(shape, spacing)
    else:
        with pytest.raises(CaseTooLarge):
            memory.check_fits(shape, spacing, limit)


def test_check_fits_at_the_boundary():
    need = memory.estimate_case_bytes(*HUGE)
    assert memory.check_fits(*HUGE, need) == need
    with pytest.raises(CaseTooLarge):
        memory.check_fits(*HUGE, need - 1)


def test_refusal_is_one_line_naming_size_and_limit():
    with pytest.raises(CaseTooLarge) as info:
        memory.check_fits(*HUGE, int(1.5 * GIB), path="/input/images/adc/case.mha",
                          limit_source="cgroup memory limit")
    exc = info.value
    assert isinstance(exc, InputError) and isinstance(exc, HiesegError) and isinstance(exc, MemoryError)
    text = str(exc)
    assert "\n" not in text
    assert text.startswith("/input/images/adc/case.mha: grid 300 x 512 x 512 (78.6 M voxels")
    assert "1.50 GiB (cgroup memory limit)" in text
    assert f"{memory.estimate_case_bytes(*HUGE) / GIB:.2f} GiB" in text


def test_refusal_reads_as_one_line_in_the_cli():
    from hieseg.app.cli import describe_failure, is_bug

    with pytest.raises(CaseTooLarge) as info:
        memory.check_fits(*HUGE, GIB)
    assert not is_bug(info.value)
    line = describe_failure(info.value)
    assert "78.6 M voxels" in line and "\n" not in line
