"""rl_zoo3 finds our env IDs through ``--gym-packages sb3_mamba_envs`` (RL^2 baseline as smoke run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rl_zoo3")

CONFIG = """\
MetaRooms-1-v0:
  n_timesteps: 512
  policy: MlpLstmPolicy
  n_envs: 2
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  policy_kwargs: "dict(lstm_hidden_size=16, net_arch=[16])"
"""


def test_rl_zoo_trains_rl2_baseline_on_our_id(tmp_path):
    conf = tmp_path / "ppo_lstm.yml"
    conf.write_text(CONFIG)
    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        "ppo_lstm",
        "--env",
        "MetaRooms-1-v0",
        "--gym-packages",
        "sb3_mamba_envs",
        "--conf-file",
        str(conf),
        "-f",
        str(logs),
        "--eval-freq",
        "-1",
        "--seed",
        "0",
        "--vec-env",
        "subproc",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logs / "ppo_lstm" / "MetaRooms-1-v0_1"
    assert (run_dir / "MetaRooms-1-v0.zip").is_file()
    assert (run_dir / "MetaRooms-1-v0" / "config.yml").is_file()
    # the Monitor saw whole meta-episodes: 2 x 100 steps each
    monitor = (run_dir / "0.monitor.csv").read_text().splitlines()
    lengths = {line.split(",")[1] for line in monitor[2:]}
    assert lengths == {"200"}
