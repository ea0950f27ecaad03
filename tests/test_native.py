"""Building and loading the C kernels: cached, atomic, opt-out, and a clear fallback without a compiler."""

from __future__ import annotations

import pytest

import sb3_mamba.native as native


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded in this process yet."""
    monkeypatch.setenv("SB3_MAMBA_CACHE_DIR", str(tmp_path))
    native.posterior_scan_library.cache_clear()
    yield tmp_path
    native.posterior_scan_library.cache_clear()


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")
def test_builds_once_into_the_cache(fresh):
    library = native.posterior_scan_library()
    assert library is not None and all(hasattr(library, name) for name in native.FUNCTIONS)
    built = sorted(fresh.glob("*.so"))
    assert len(built) == 1 and not [p for p in fresh.iterdir() if p not in built]  # no temporary left behind
    mtime = built[0].stat().st_mtime_ns
    assert native.build(native._compiler()) == built[0] and built[0].stat().st_mtime_ns == mtime  # reused


def test_opt_out(fresh, monkeypatch):
    monkeypatch.setenv("SB3_MAMBA_NATIVE", "0")
    assert native.posterior_scan_library() is None
    assert not list(fresh.iterdir())


def test_no_compiler_warns_and_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.posterior_scan_library() is None


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")
def test_failed_build_warns_and_leaves_nothing(fresh, monkeypatch, tmp_path_factory):
    broken = tmp_path_factory.mktemp("src") / "posterior_scan.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="could not build"):
        assert native.posterior_scan_library() is None
    assert not list(fresh.glob("*"))
