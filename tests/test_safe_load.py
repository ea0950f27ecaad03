"""Loading without unpickling: ``MAMBA.load(..., safe=True)`` and the pickle-free ``.npz`` replay file."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import pickle
import warnings
import zipfile

import cloudpickle
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA, UnsafeFileError
from sb3_mamba.buffers import MetaEpisodeBuffer
from sb3_mamba.safe_load import SAFE_DATA_KEY, load_replay_npz, save_replay_npz

SMALL = dict(
    seed=0,
    prefill_episodes=2,
    batch_size=4,
    train_ratio=0.2,
    wm_indices=8,
    ac_indices=8,
    imag_horizon=3,
    units=16,
    dyn_deter=16,
    dyn_stoch=4,
    dyn_discrete=4,
    dyn_hidden=16,
    policy_kwargs=dict(encoder_units=16, reconstruction_window=0),
)


def rooms_env(n_envs: int = 2):
    return make_vec_env("MetaRooms-1-v0", n_envs=n_envs, seed=0, env_kwargs={"sub_episode_length": 5})


def trained_model(env, steps: int = 66) -> MAMBA:
    """A small model after a few updates, its envs in the middle of meta-episodes (H = 10)."""
    model = MAMBA("RSSMPolicy", env, **SMALL)
    model.learn(steps)
    assert model._n_updates > 0
    return model


class Exploit:
    """Unpickling this creates ``marker``: a stand-in for a pickle that runs code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def rewrite_zip(source: pathlib.Path, target: pathlib.Path, data=None, members=None) -> pathlib.Path:
    """Copy a model zip, replacing its ``data`` (a function of the parsed JSON) and/or other members (bytes)."""
    members = members or {}
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            content = archive.read(name)
            if name == "data" and data is not None:
                content = json.dumps(data(json.loads(content))).encode()
            out.writestr(name, members.get(name, content))
    return target


def serialized(obj) -> dict:
    """``obj`` as SB3's ``data_to_json`` stores what JSON cannot hold."""
    return {":type:": str(type(obj)), ":serialized:": base64.b64encode(cloudpickle.dumps(obj)).decode()}


def test_safe_load_gives_the_same_model_without_unpickling(tmp_path, monkeypatch):
    env = rooms_env()
    model = trained_model(env)
    path = tmp_path / "mamba.zip"
    model.save(path)

    def refuse(*args, **kwargs):
        raise AssertionError("safe=True unpickled a data entry")

    monkeypatch.setattr(cloudpickle, "loads", refuse)  # what SB3's json_to_data calls
    loaded = MAMBA.load(path, env=env, safe=True)
    monkeypatch.undo()
    assert (loaded.num_timesteps, loaded._n_updates, loaded._episode_num) == (
        model.num_timesteps,
        model._n_updates,
        model._episode_num,
    )
    assert loaded.observation_space == model.observation_space and loaded.action_space == model.action_space
    assert loaded.policy_class is type(model.policy)
    assert loaded._rng.bit_generator.state == model._rng.bit_generator.state
    assert list(loaded.ep_info_buffer) == list(model.ep_info_buffer)
    assert list(loaded._sub_episode_returns) == list(model._sub_episode_returns)
    assert not hasattr(loaded, SAFE_DATA_KEY)
    for name in ("model_optimizer", "actor_optimizer", "critic_optimizer"):
        saved, restored = getattr(model.policy, name).state_dict(), getattr(loaded.policy, name).state_dict()
        for key in saved["state"]:
            torch.testing.assert_close(saved["state"][key]["exp_avg"], restored["state"][key]["exp_avg"])

    in_memory = MAMBA.load(io.BytesIO(path.read_bytes()), safe=True)  # a file object, no env: predict only
    obs = env.reset()
    states = [None, None, None]
    starts = np.ones(2, dtype=bool)
    for _ in range(12):
        actions = []
        for i, agent in enumerate((model, loaded, in_memory)):
            torch.manual_seed(int(starts.sum()))  # the latents are sampled: the same draws for each
            action, states[i] = agent.predict(obs, states[i], starts, deterministic=True)
            actions.append(action)
        np.testing.assert_array_equal(actions[0], actions[1])
        np.testing.assert_array_equal(actions[0], actions[2])
        obs, _, starts, _ = env.step(actions[0])

    # the run state (envs' meta-episodes, random generators) was left out: continuing says so
    with pytest.warns(UserWarning, match="safe=True.*restarts the envs' meta-episodes"):
        loaded.learn(20, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 20


def test_safe_load_refuses_a_pickled_data_entry_naming_it(tmp_path):
    model = MAMBA("RSSMPolicy", rooms_env(), **SMALL)
    model.save(tmp_path / "mamba.zip")
    marker = tmp_path / "code_ran"
    evil = rewrite_zip(
        tmp_path / "mamba.zip", tmp_path / "evil.zip", data=lambda data: {**data, "evil": serialized(Exploit(marker))}
    )
    with pytest.raises(UnsafeFileError, match=r"data entry 'evil'.*pickled.*custom_objects"):
        MAMBA.load(evil, safe=True)
    assert not marker.exists()
    MAMBA.load(evil)  # the control: a plain load runs the payload
    assert marker.exists()

    # a file without the plain descriptions (an older save) is refused entry by entry, not unpickled
    bare = rewrite_zip(
        tmp_path / "mamba.zip",
        tmp_path / "bare.zip",
        data=lambda data: {k: v for k, v in data.items() if k != SAFE_DATA_KEY},
    )
    with pytest.raises(UnsafeFileError, match="'policy_class'"):
        MAMBA.load(bare, safe=True)
    # a policy class that is not MAMBA's
    foreign = rewrite_zip(
        tmp_path / "mamba.zip",
        tmp_path / "foreign.zip",
        data=lambda data: {**data, SAFE_DATA_KEY: {**data[SAFE_DATA_KEY], "policy_class": "os.system"}},
    )
    with pytest.raises(UnsafeFileError, match=r"'os\.system' is not one of"):
        MAMBA.load(foreign, safe=True)


def test_safe_load_refuses_a_pickled_object_in_a_tensor_file(tmp_path):
    model = MAMBA("RSSMPolicy", rooms_env(), **SMALL)
    model.save(tmp_path / "mamba.zip")
    marker = tmp_path / "code_ran"
    weights = io.BytesIO()
    torch.save({**model.policy.state_dict(), "extra": Exploit(marker)}, weights)
    evil = rewrite_zip(tmp_path / "mamba.zip", tmp_path / "evil.zip", members={"policy.pth": weights.getvalue()})
    with pytest.raises(UnsafeFileError, match=r"policy\.pth holds pickled Python objects"):
        MAMBA.load(evil, safe=True)
    assert not marker.exists()
    torch.load(io.BytesIO(weights.getvalue()), weights_only=False)  # the control: the payload is live
    assert marker.exists()


def test_npz_replay_round_trip_gives_the_same_batches(tmp_path):
    model = trained_model(rooms_env())
    buffer = model.replay_buffer
    assert len(buffer) > 0 and all(entries is not None for entries in buffer._open)  # meta-episodes in progress
    path = tmp_path / "replay.npz"
    model.save_replay_buffer(path)
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)

    other = MAMBA("RSSMPolicy", rooms_env(), **SMALL)
    other.load_replay_buffer(path, safe=True)
    restored = other.replay_buffer
    assert (len(restored), restored.num_entries, restored.num_episodes_added, restored.capacity) == (
        len(buffer),
        buffer.num_entries,
        buffer.num_episodes_added,
        buffer.capacity,
    )
    assert restored.nbytes == buffer.nbytes
    for sample in ("sample_prefixes", "sample_windows"):
        a = getattr(buffer, sample)(8, 7, np.random.default_rng(1))
        b = getattr(restored, sample)(8, 7, np.random.default_rng(1))
        for field in ("obs", "action", "reward", "terminated", "is_first", "mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # the meta-episodes in progress continue: finishing them stores the same meta-episodes
    last_step = (
        np.zeros((2, 4), np.float32),
        np.zeros((2, 4), np.float32),
        np.eye(4, dtype=np.float32)[[0, 1]],
        np.ones(2),
        np.zeros(2, bool),
        np.ones(2, bool),
    )
    for source in (buffer, restored):
        source.add(*last_step)
    assert len(restored) == len(buffer)
    for a, b in zip(buffer.episodes, restored.episodes, strict=True):
        for field in ("obs", "action", "reward", "terminated"):
            np.testing.assert_array_equal(a[field], b[field])


def test_npz_replay_keeps_dict_observations():
    space = spaces.Dict({"image": spaces.Box(0, 255, (4, 4, 3), np.uint8), "reward_time": spaces.Box(-1, 1, (2,))})
    buffer = MetaEpisodeBuffer(100, space, spaces.Box(-1, 1, (2,)), n_envs=2)
    rng = np.random.default_rng(0)
    for step in range(6):
        obs = {key: np.stack([s.sample() for _ in range(2)]) for key, s in space.spaces.items()}
        nxt = {key: np.stack([s.sample() for _ in range(2)]) for key, s in space.spaces.items()}
        done = np.array([step % 3 == 2, step == 3])
        buffer.add(obs, nxt, rng.uniform(-1, 1, (2, 2)), rng.normal(size=2), np.zeros(2, bool), done)
    file = io.BytesIO()
    save_replay_npz(file, buffer)
    file.seek(0)
    restored = load_replay_npz(file)
    assert restored.observation_space == space and len(restored) == len(buffer) == 3
    a = buffer.sample_windows(5, 3, np.random.default_rng(0))
    b = restored.sample_windows(5, 3, np.random.default_rng(0))
    for key in space.spaces:
        assert b.obs[key].dtype == a.obs[key].dtype
        np.testing.assert_array_equal(a.obs[key], b.obs[key])
    assert [e is None for e in restored._open] == [e is None for e in buffer._open] == [True, False]
    for x, y in zip(buffer._open[1], restored._open[1], strict=True):
        np.testing.assert_array_equal(x[0]["image"], y[0]["image"])
        np.testing.assert_array_equal(x[1], y[1])
        assert (np.float32(x[2]), x[3]) == (y[2], y[3])  # rewards at the float32 of stored meta-episodes


def test_safe_replay_load_refuses_pickles(tmp_path):
    model = MAMBA("RSSMPolicy", rooms_env(), **SMALL)
    model.learn(40)
    marker = tmp_path / "code_ran"
    model.save_replay_buffer(tmp_path / "replay.npz")
    with np.load(tmp_path / "replay.npz") as npz:
        arrays = dict(npz)

    # an object array, in place of a real field or under a name of its own
    for name in ("episodes/reward", "extra"):
        np.savez(tmp_path / "evil.npz", **{**arrays, name: np.array([Exploit(marker)], dtype=object)})
        with pytest.raises(UnsafeFileError, match=f"'{name}' holds pickled Python objects"):
            model.load_replay_buffer(tmp_path / "evil.npz", safe=True)
        assert not marker.exists()

    # a pickle: refused by name with safe=True, pointing to .npz
    (tmp_path / "replay.pkl").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UnsafeFileError, match=r"safe=True refuses .*replay\.pkl.*\.npz"):
        model.load_replay_buffer(tmp_path / "replay.pkl", safe=True)
    # and a pickle behind an .npz name is not unpickled either
    (tmp_path / "disguised.npz").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UnsafeFileError, match="a pickle: refused"):
        model.load_replay_buffer(tmp_path / "disguised.npz")
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):  # the control: a plain load unpickles it (then finds no buffer)
            model.load_replay_buffer(tmp_path / "replay.pkl")
    assert marker.exists()
