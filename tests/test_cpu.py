"""The CPU allocator setting applies on glibc Linux and honours its opt-out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sb3_mamba import cpu

CHECK = "from sb3_mamba.cpu import tune_allocator; print(tune_allocator())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tune_allocator_applies_once_per_process():
    assert cpu.tune_allocator() in (True, False)  # musl has no mallopt: False, never an error
    assert cpu.tune_allocator() is cpu.tune_allocator()  # cached: one call per process
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_tune_allocator_opt_out():
    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        check=True,
        env={"SB3_MAMBA_TUNE_MALLOC": "0", "PATH": ""},
    )
    assert out.stdout.strip() == "False"
