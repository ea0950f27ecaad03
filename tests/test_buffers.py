"""MetaEpisodeBuffer: whole meta-episodes in, prefixes and windows out, bounded capacity."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import sb3_mamba_envs  # noqa: F401
from sb3_mamba.buffers import MetaEpisodeBuffer


def fill(buffer: MetaEpisodeBuffer, env_id: str, episodes_per_env: int, seed: int = 0, **env_kwargs):
    """Play random meta-episodes in ``n_envs`` envs stepped in lock-step, like a VecEnv."""
    envs = [gym.make(env_id, **env_kwargs) for _ in range(buffer.n_envs)]
    observations = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    finished = [0] * len(envs)
    history = [[o] for o in observations]
    while min(finished) < episodes_per_env:
        actions = np.array([env.action_space.sample() for env in envs])
        next_obs, rewards, terminated, done = [], [], [], []
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(actions[i])
            next_obs.append(o)
            rewards.append(r)
            terminated.append(term)
            done.append(term or trunc)
        buffer.add(
            np.stack(observations), np.stack(next_obs), actions, np.array(rewards), np.array(terminated), np.array(done)
        )
        for i, env in enumerate(envs):
            history[i].append(next_obs[i])
            if done[i]:
                finished[i] += 1
                next_obs[i] = env.reset()[0]
        observations = next_obs
    return history


def test_stores_whole_meta_episodes_from_parallel_envs():
    env = gym.make("MetaRooms-2-v0", sub_episode_length=10)
    buffer = MetaEpisodeBuffer(10_000, env.observation_space, env.action_space, n_envs=3)
    fill(buffer, "MetaRooms-2-v0", episodes_per_env=2, sub_episode_length=10)
    assert len(buffer) == 6 and buffer.num_entries == 6 * 21  # H = 20 steps -> 21 entries
    episode = buffer.episodes[0]
    assert episode["obs"].dtype == np.float32 and episode["obs"].shape == (21, 4)
    np.testing.assert_array_equal(episode["action"][0], 0.0)  # no action before o_0
    np.testing.assert_array_equal(episode["action"][1:].sum(-1), 1.0)  # one-hot Discrete actions
    # reward[t] is the reward on arriving at o_t, which the env also put into o_t
    np.testing.assert_allclose(episode["reward"][1:], episode["obs"][1:, -2])
    np.testing.assert_allclose(episode["obs"][:, -1], np.arange(21) / 20)  # t/H from 0 to 1


def test_prefix_sampling_starts_at_step_zero_and_cuts():
    env = gym.make("MetaRooms-1-v0", sub_episode_length=10)
    buffer = MetaEpisodeBuffer(10_000, env.observation_space, env.action_space, n_envs=2)
    fill(buffer, "MetaRooms-1-v0", episodes_per_env=3, sub_episode_length=10)
    rng = np.random.default_rng(0)
    batch = buffer.sample_prefixes(batch_size=8, length=7, rng=rng)
    assert batch.obs.shape == (8, 7, 4) and batch.action.shape == (8, 7, 4)
    np.testing.assert_allclose(batch.obs[:, :, -1], np.tile(np.arange(7) / 20, (8, 1)), atol=1e-7)
    assert batch.is_first[:, 0].all() and not batch.is_first[:, 1:].any()
    assert batch.mask.all()
    # longer than the meta-episode: zero padding, masked out
    batch = buffer.sample_prefixes(batch_size=4, length=30, rng=rng)
    assert batch.mask[:, :21].all() and not batch.mask[:, 21:].any()
    assert (batch.obs[:, 21:] == 0).all()


def test_window_sampling():
    env = gym.make("MetaRooms-1-v0", sub_episode_length=50)
    buffer = MetaEpisodeBuffer(10_000, env.observation_space, env.action_space)
    fill(buffer, "MetaRooms-1-v0", episodes_per_env=2, sub_episode_length=50)
    batch = buffer.sample_windows(batch_size=64, length=16, rng=np.random.default_rng(1))
    times = batch.obs[:, :, -1] * 100
    starts = np.round(times[:, 0]).astype(int)
    assert starts.min() >= 0 and starts.max() <= 101 - 16 and len(set(starts)) > 10  # random starts
    np.testing.assert_allclose(times, starts[:, None] + np.arange(16), atol=1e-4)  # contiguous
    assert batch.is_first[:, 0].all() and batch.mask.all()


def test_capacity_drops_oldest_meta_episodes():
    env = gym.make("MetaRooms-1-v0", sub_episode_length=5)  # 11 entries per meta-episode
    buffer = MetaEpisodeBuffer(50, env.observation_space, env.action_space)
    fill(buffer, "MetaRooms-1-v0", episodes_per_env=10, sub_episode_length=5)
    assert buffer.num_episodes_added == 10
    assert len(buffer) == 4 and buffer.num_entries == 44 <= 50
    assert buffer.nbytes == 44 * (4 * 4 + 4 * 4 + 4 + 1)


def test_continuous_actions_and_pickle_round_trip(tmp_path):
    env = gym.make("MetaPointRobot-v0", sub_episode_length=5)
    buffer = MetaEpisodeBuffer(1000, env.observation_space, env.action_space, n_envs=2)
    fill(buffer, "MetaPointRobot-v0", episodes_per_env=2, sub_episode_length=5)
    assert buffer.episodes[0]["action"].shape == (16, 2)
    path = tmp_path / "buffer.pkl"
    path.write_bytes(pickle.dumps(buffer))
    loaded = pickle.loads(path.read_bytes())
    a = buffer.sample_prefixes(4, 16, np.random.default_rng(0))
    b = loaded.sample_prefixes(4, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.action, b.action)


def test_array_round_trip_with_no_unfinished_or_no_stored_meta_episodes():
    """Saved at a meta-episode boundary (every env just finished) or before the first one ended."""
    env = gym.make("MetaPointRobot-v0", sub_episode_length=5)
    empty = MetaEpisodeBuffer(1000, env.observation_space, env.action_space, n_envs=2)
    buffer = MetaEpisodeBuffer(1000, env.observation_space, env.action_space, n_envs=2)
    fill(buffer, "MetaPointRobot-v0", episodes_per_env=2, sub_episode_length=5)
    assert buffer._open == [None, None]  # the envs finished together
    for original in (buffer, empty):
        loaded = MetaEpisodeBuffer.from_arrays(original.to_arrays(), env.observation_space, env.action_space)
        assert len(loaded) == len(original) and loaded._open == [None, None]
        for stored, restored in zip(original.episodes, loaded.episodes, strict=True):
            for name in ("obs", "action", "reward", "terminated"):
                np.testing.assert_array_equal(restored[name], stored[name])


def test_dict_image_observations_keep_uint8():
    obs_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "reward_time": spaces.Box(-1, 1, (2,), np.float32),
        }
    )
    buffer = MetaEpisodeBuffer(1000, obs_space, spaces.Box(-1, 1, (2,), np.float32))
    obs = {"image": np.full((1, 8, 8, 3), 9, np.uint8), "reward_time": np.zeros((1, 2), np.float32)}
    for t in range(4):
        buffer.add(obs, obs, np.zeros((1, 2)), np.zeros(1), np.zeros(1, bool), np.array([t == 3]))
    batch = buffer.sample_prefixes(2, 5, np.random.default_rng(0))
    assert batch.obs["image"].dtype == np.uint8 and batch.obs["image"].shape == (2, 5, 8, 8, 3)
    assert buffer.nbytes == 5 * (192 + 8 + 8 + 4 + 1)


def test_bad_input():
    space = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ValueError, match="capacity"):
        MetaEpisodeBuffer(1, space, space)
    with pytest.raises(ValueError, match="action space"):
        MetaEpisodeBuffer(100, space, spaces.MultiBinary(3))
    buffer = MetaEpisodeBuffer(100, space, space)
    with pytest.raises(RuntimeError, match="no complete meta-episode"):
        buffer.sample_prefixes(2, 5, np.random.default_rng(0))
