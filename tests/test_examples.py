"""The examples run end to end at a tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_meta_env_demo(tmp_path):
    out = run([str(ROOT / "examples/meta_env_demo.py"), "--env", "MetaRooms-2-v0", "--episodes", "3",
               "--gif", str(tmp_path / "demo.gif")], tmp_path)
    assert "random" in out and "oracle" in out
    assert (tmp_path / "demo.gif").stat().st_size > 1000


def test_train_mamba_example(tmp_path):
    out = run([str(ROOT / "examples/train_mamba.py"), "--steps", "160", "--evals", "1", "--n-envs", "2",
               "--save", str(tmp_path / "m.zip")], tmp_path)
    assert "random policy" in out and "final return" in out
    assert (tmp_path / "m.zip").is_file()
