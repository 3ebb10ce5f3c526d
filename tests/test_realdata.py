"""Missing real data skips a test on a developer's machine but fails it in CI (CI=true)."""

from pathlib import Path

import pytest
import realdata


@pytest.fixture
def no_tarball(monkeypatch):
    monkeypatch.setattr(realdata, "TARBALL", Path("/nonexistent/bonbid2023-train-40cases.tar.gz"))
    realdata._prepare.cache_clear()
    yield
    realdata._prepare.cache_clear()


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_real_data_fails_in_ci(no_tarball, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        realdata.real_cases_dir()


@pytest.mark.parametrize("value", [None, "", "false"])
def test_missing_real_data_skips_outside_ci(no_tarball, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="real cases not available"):
        realdata.real_cases_dir()
