"""Crash-safe files, clear errors on bad files and bad data, bounded replay memory, determinism."""

from __future__ import annotations

import json
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_mamba import MAMBA, NonFiniteError, NonFiniteLossError
from sb3_mamba.checkpoints import CHECKPOINT_FORMAT, CheckpointError, latest_checkpoint
from tests.test_mamba import TINY, rooms_env, tiny_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A briefly trained model, saved with its replay buffer."""
    path = tmp_path_factory.mktemp("saved") / "model.zip"
    model = tiny_model(rooms_env())
    model.learn(100)
    model.save(path)
    model.save_replay_buffer(path.with_name("buffer.pkl"))
    return path


def vector(model: MAMBA) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()


# -- atomic writes ---------------------------------------------------------------------
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model(rooms_env())
    model.learn(60)
    path = tmp_path / "ckpt.zip"
    model.save(path)
    before_bytes, before_params = path.read_bytes(), vector(model)
    model.learn(60, reset_num_timesteps=False)
    assert not torch.equal(vector(model), before_params)

    calls = {"n": 0}
    real_save = torch.save

    def crashing_save(*args, **kwargs):  # dies half-way through writing the zip
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="injected"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.zip"]  # no temporary file left behind
    assert torch.equal(vector(MAMBA.load(path)), before_params)


def test_crash_during_replay_buffer_save_keeps_previous_file(tmp_path, monkeypatch):
    model = tiny_model(rooms_env())
    model.learn(60)
    path = tmp_path / "buffer.pkl"
    model.save_replay_buffer(path)
    before = path.read_bytes()
    model.learn(60, reset_num_timesteps=False)
    monkeypatch.setattr(pickle, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError, match="injected"):
        model.save_replay_buffer(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    model.load_replay_buffer(path)


def test_latest_checkpoint_skips_a_model_without_its_buffer(tmp_path):
    model = tiny_model(rooms_env())
    model.learn(80, callback=CheckpointCallback(10, str(tmp_path), save_replay_buffer=True))
    (tmp_path / "rl_model_replay_buffer_80_steps.pkl").unlink()  # killed between model and buffer
    model_path, buffer_path = latest_checkpoint(tmp_path)
    assert model_path.name == "rl_model_60_steps.zip"
    assert buffer_path.name == "rl_model_replay_buffer_60_steps.pkl"
    assert latest_checkpoint(tmp_path / "empty") is None


# -- bad files ---------------------------------------------------------------------------
def test_truncated_model_file(saved_model, tmp_path):
    data = saved_model.read_bytes()
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        MAMBA.load(bad)


def test_corrupted_model_file(saved_model, tmp_path):
    with zipfile.ZipFile(saved_model) as archive:
        info = archive.getinfo("policy.pth")
    data = bytearray(saved_model.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's payload
    for i in range(start + 100, start + 140):
        data[i] ^= 0xFF
    bad = tmp_path / "corrupted.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"policy.pth.*CRC"):
        MAMBA.load(bad)


def test_not_a_zip_and_zip_without_model(tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable model zip"):
        MAMBA.load(text)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(CheckpointError, match="not a complete Stable-Baselines3 model zip"):
        MAMBA.load(other)
    with pytest.raises(FileNotFoundError):
        MAMBA.load(tmp_path / "missing.zip")


def test_foreign_model_file(tmp_path):
    path = tmp_path / "ppo.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16).save(path)
    with pytest.raises(
        CheckpointError, match=r"not saved by sb3-mamba.*stable_baselines3\.common\.policies\.ActorCriticPolicy"
    ):
        MAMBA.load(path)


def test_newer_format_is_refused(saved_model, tmp_path):
    newer = tmp_path / "newer.zip"
    with zipfile.ZipFile(saved_model) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "data":
                data = json.loads(payload)
                assert data["_checkpoint_format"] == CHECKPOINT_FORMAT
                data["_checkpoint_format"] = CHECKPOINT_FORMAT + 1
                payload = json.dumps(data).encode()
            dst.writestr(item, payload)
    with pytest.raises(CheckpointError, match=r"format 2.*upgrade"):
        MAMBA.load(newer)


def test_model_for_another_observation_space(saved_model):
    env = make_vec_env("MetaPointRobot-v0", n_envs=2)
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        MAMBA.load(saved_model, env=env)
    model = MAMBA.load(saved_model)
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        model.set_env(env)


def test_bad_replay_buffer_files(saved_model, tmp_path):
    model = MAMBA.load(saved_model, env=rooms_env())
    buffer = saved_model.with_name("buffer.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(buffer.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable replay buffer"):
        model.load_replay_buffer(truncated)
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"not": "a buffer"}))
    with pytest.raises(CheckpointError, match="does not hold a MetaEpisodeBuffer"):
        model.load_replay_buffer(foreign)
    other = MAMBA("RSSMPolicy", make_vec_env("MetaPointRobot-v0", n_envs=2), **TINY)
    with pytest.raises(CheckpointError, match="observation_space"):
        other.load_replay_buffer(buffer)
    model.load_replay_buffer(buffer)  # the good one still loads


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"units": -8}, "units"),
        ({"dyn_stoch": -1}, "dyn_stoch"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"sampling": "window", "batch_length": 64}, "batch_length"),
        ({"wm_horizon_initial": 5, "wm_horizon_steps": -10}, "wm_horizon_steps"),
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"prefill_episodes": -1}, "prefill_episodes"),
        ({"slow_critic_fraction": 0.0}, "slow_critic_fraction"),
    ],
)
def test_more_invalid_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MAMBA("RSSMPolicy", rooms_env(), **{**TINY, **kwargs})


# -- guards --------------------------------------------------------------------------------
class InjectNaN(gym.Wrapper):
    """Returns NaN in the observation or the reward at env step ``at``."""

    def __init__(self, env, what: str, at: int):
        super().__init__(env)
        self.what, self.at, self.steps = what, at, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.what == "reward":
                reward = float("nan")
            else:
                obs = obs.copy()
                obs[0] = np.inf
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("what, message", [("reward", "non-finite reward"), ("obs", "non-finite observation")])
def test_non_finite_env_data_stops_training_and_keeps_checkpoint(tmp_path, what, message):
    env = make_vec_env(
        "MetaRooms-1-v0",
        n_envs=2,
        seed=0,
        env_kwargs={"sub_episode_length": 10},
        wrapper_class=InjectNaN,
        wrapper_kwargs={"what": what, "at": 45},
    )
    model = tiny_model(env)
    with pytest.raises(NonFiniteError, match=f"{message} \\(env 0 of the VecEnv, after env step 88\\)"):
        model.learn(200, callback=CheckpointCallback(10, str(tmp_path), save_replay_buffer=True))
    assert model.num_timesteps == 88  # nothing of the bad step was counted
    stored = [ep["obs"] for ep in model.replay_buffer.episodes] + [e[0] for e in model.replay_buffer._open[0]]
    assert all(np.isfinite(o).all() for o in stored)
    path, buffer = latest_checkpoint(tmp_path)
    assert path.name == "rl_model_80_steps.zip"
    resumed = MAMBA.load(path)
    resumed.load_replay_buffer(buffer)
    assert resumed.num_timesteps == 80


def test_non_finite_gradient_stops_before_the_update():
    model = tiny_model(rooms_env())
    model.learn(60)
    weight = model.policy.actor_critic.critic[0].weight
    weight.register_hook(lambda grad: grad * float("nan"))
    before = vector(model)
    with pytest.raises(NonFiniteLossError, match="critic gradient"):
        model.train(1)
    assert isinstance(NonFiniteLossError("x"), NonFiniteError)
    after = vector(model)
    world_model_size = sum(p.numel() for p in model.policy.world_model.parameters())
    # the world-model update of this step is done; the actor and critic are untouched
    actor_critic = slice(world_model_size, None)
    assert torch.equal(before[actor_critic], after[actor_critic])


def test_replay_memory_is_bounded_and_logged(tmp_path):
    model = tiny_model(rooms_env(), buffer_size=105)  # 5 meta-episodes of 21 entries
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(400, log_interval=1)
    buffer = model.replay_buffer
    assert buffer.num_episodes_added == 20 and len(buffer) == 5 and buffer.num_entries == 105
    per_entry = buffer.nbytes / buffer.num_entries
    assert per_entry == 4 * 4 + 4 * 4 + 4 + 1  # obs (4 float32) + one-hot action (4) + reward + flag
    logged = np.genfromtxt(tmp_path / "progress.csv", delimiter=",", names=True)["trainbuffer_bytes"]
    assert logged.max() <= 105 * per_entry


# -- determinism -----------------------------------------------------------------------------
def test_same_seed_same_actions_losses_and_returns(tmp_path):
    runs = []
    for i in range(2):
        model = tiny_model(rooms_env(seed=5), seed=11)
        model.set_logger(configure(str(tmp_path / str(i)), ["csv"]))
        model.learn(160, log_interval=1)
        runs.append(model)
    a, b = runs
    for ep_a, ep_b in zip(a.replay_buffer.episodes, b.replay_buffer.episodes, strict=True):
        for key in ep_a:
            np.testing.assert_array_equal(ep_a[key], ep_b[key], err_msg=key)  # actions, rewards, observations
    assert [ep["r"] for ep in a.ep_info_buffer] == [ep["r"] for ep in b.ep_info_buffer]
    log_a = (tmp_path / "0" / "progress.csv").read_text()
    log_b = (tmp_path / "1" / "progress.csv").read_text()
    header = log_a.splitlines()[0].split(",")
    keep = [i for i, key in enumerate(header) if key.startswith(("train/", "rollout/"))]
    rows_a = [[row.split(",")[i] for i in keep] for row in log_a.splitlines()]
    rows_b = [[row.split(",")[i] for i in keep] for row in log_b.splitlines()]
    assert rows_a == rows_b and any("train/actor_loss" == header[i] for i in keep)
