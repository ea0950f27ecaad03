"""A run SIGKILLed at random points (and inside a checkpoint write) resumes and ends exactly like an uninterrupted one.

Each kill is a real ``SIGKILL`` of a training subprocess (``tests/resume_worker.py``):
no ``finally``, no flush. The resumed chain must produce the same transitions,
counters, parameters and optimiser states as a run that was never stopped,
bit for bit (CPU, one thread in every process).
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from sb3_mamba import MAMBA
from sb3_mamba.checkpoints import check_model_file

WORKER = pathlib.Path(__file__).with_name("resume_worker.py")
TOTAL = 400


def run_worker(run_dir: pathlib.Path, env_id: str, *args: str) -> int:
    result = subprocess.run(
        [sys.executable, str(WORKER), str(run_dir), "--total", str(TOTAL), "--env", env_id, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.returncode


def load_final(run_dir: pathlib.Path) -> MAMBA:
    model = MAMBA.load(run_dir / "final.zip")
    model.load_replay_buffer(run_dir / "final_buffer.pkl")
    return model


def assert_same_tree(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs: dict[str, MAMBA] = {}

    def get(env_id: str) -> MAMBA:
        if env_id not in runs:
            run_dir = tmp_path_factory.mktemp("uninterrupted")
            assert run_worker(run_dir, env_id) == 0
            runs[env_id] = load_final(run_dir)
        return runs[env_id]

    return get


@pytest.mark.parametrize(
    "env_id, kill_seed",
    [
        ("MetaRooms-1-v0", 2024),  # discrete actions
        ("MetaReacher-1-v0", 7),  # continuous actions, MuJoCo physics state
        pytest.param("MetaRooms-1-v0", 1, marks=pytest.mark.slow),
        pytest.param("MetaPointRobotWind-v0", 2, marks=pytest.mark.slow),  # wind noise from the env's generator
        pytest.param("MetaEscapeRoom-v0", 3, marks=pytest.mark.slow),
    ],
)
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, uninterrupted, env_id, kill_seed):
    uninterrupted = uninterrupted(env_id)
    kill_points = sorted(np.random.default_rng(kill_seed).choice(np.arange(50, TOTAL - 10, 2), 3, replace=False))
    # start, then a kill at each point; one extra process is killed inside a checkpoint write
    assert run_worker(tmp_path, env_id, "--kill-at", str(kill_points[0])) == -signal.SIGKILL
    assert run_worker(tmp_path, env_id, "--resume", "--kill-at", str(kill_points[1])) == -signal.SIGKILL
    # the 5th torch.save of the process is inside the 2nd checkpoint zip (4 tensor files per zip)
    assert run_worker(tmp_path, env_id, "--resume", "--kill-in-save", "5") == -signal.SIGKILL
    leftovers = list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert leftovers, "the kill should have hit a checkpoint half-written"
    for zip_path in (tmp_path / "checkpoints").glob("*.zip"):  # every visible checkpoint is complete
        check_model_file(zip_path)
    assert run_worker(tmp_path, env_id, "--resume", "--kill-at", str(kill_points[2])) == -signal.SIGKILL
    assert run_worker(tmp_path, env_id, "--resume") == 0

    resumed = load_final(tmp_path)
    for counter in ("num_timesteps", "_n_updates", "_episode_num", "_lifetime_timesteps", "_train_credit"):
        assert getattr(resumed, counter) == getattr(uninterrupted, counter), counter
    assert resumed._rng.bit_generator.state == uninterrupted._rng.bit_generator.state
    # transitions: every stored and unfinished meta-episode
    buffer_a, buffer_b = uninterrupted.replay_buffer, resumed.replay_buffer
    assert buffer_a.num_episodes_added == buffer_b.num_episodes_added > 0
    assert_same_tree(list(buffer_a.episodes), list(buffer_b.episodes), "episodes")
    assert_same_tree(buffer_a._open, buffer_b._open, "unfinished")
    # parameters and optimiser states
    assert_same_tree(uninterrupted.policy.state_dict(), resumed.policy.state_dict(), "policy")
    for name in ("model_optimizer", "actor_optimizer", "critic_optimizer"):
        opt_a, opt_b = getattr(uninterrupted.policy, name), getattr(resumed.policy, name)
        assert_same_tree(opt_a.state_dict(), opt_b.state_dict(), name)
    assert uninterrupted._n_updates > 50  # the comparison covers real training, not only prefill
