"""The comparison command: zoo learning curves, per-sub-episode plot and markdown table from zoo run folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rl_zoo3")
pytest.importorskip("seaborn")

from tests.test_zoo import debug_conf  # noqa: E402


def test_compare_reads_zoo_runs_and_writes_plots_and_table(tmp_path):
    logs = tmp_path / "logs"
    for algo in ("mamba", "ppo_lstm"):
        for seed in (0, 1):
            cmd = [sys.executable, "-m", "sb3_mamba.zoo", "train", "--algo", algo, "--env", "MetaRooms-1-v0",
                   "-f", str(logs), "-n", "800", "--eval-freq", "200", "--eval-episodes", "2", "--seed", str(seed),
                   *debug_conf(algo)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "rooms1"
    done = subprocess.run([sys.executable, "-m", "sb3_mamba.compare", "--env", "MetaRooms-1-v0", "-f", str(logs),
                           "-o", str(out), "--algos", "mamba", "ppo_lstm"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results" / "rooms1.md").read_text()
    assert "| mamba |" in table and "| ppo_lstm |" in table and "| 2 |" in table  # two seeds each
    for suffix in ("_learning_curves.png", "_sub_episodes.png", "_zoo_scores.png"):
        path = tmp_path / "results" / f"rooms1{suffix}"
        assert path.is_file() and path.stat().st_size > 5000, suffix


def test_sub_episode_curves_parse_monitor_files(tmp_path):
    from sb3_mamba.compare import sub_episode_curves

    run = tmp_path / "run_1"
    run.mkdir()
    (run / "0.monitor.csv").write_text(
        '#{"t_start": 0, "env_id": "MetaRooms-1-v0"}\n'
        "r,l,t,sub_episode_returns\n"
        '-20.0,200,0.5,"[-10.0, -10.0]"\n'
        '30.5,200,1.0,"[10.0, 20.5]"\n'
    )
    (steps, returns), = sub_episode_curves([run])
    assert steps.tolist() == [200.0, 400.0]
    assert returns.tolist() == [[-10.0, -10.0], [10.0, 20.5]]
