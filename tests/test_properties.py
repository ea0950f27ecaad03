"""Property-based tests (hypothesis) of the replay buffer and the meta-episode env's bookkeeping."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from sb3_mamba.buffers import MetaEpisodeBuffer
from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv

N_ACTIONS = 3
OBS_SPACE = spaces.Box(-1e6, 1e6, shape=(3,), dtype=np.float32)


# -- replay buffer ---------------------------------------------------------------------
def observation(env: int, episode: int, t: int) -> np.ndarray:
    """An observation that names where it came from, so stored data can be traced back."""
    return np.array([env, episode, t], dtype=np.float32)


@st.composite
def buffer_plans(draw):
    """Episode lengths per env (lock-step VecEnv), actions seed, capacity."""
    n_envs = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.lists(st.integers(1, 12), min_size=0, max_size=5), min_size=n_envs, max_size=n_envs))
    capacity = draw(st.integers(2, 80))
    return n_envs, lengths, capacity, draw(st.integers(0, 2**16))


def play_plan(n_envs: int, lengths: list[list[int]], capacity: int, seed: int):
    """Feed the buffer like MAMBA's collection loop does; return it and the expected completed episodes."""
    buffer = MetaEpisodeBuffer(capacity, OBS_SPACE, spaces.Discrete(N_ACTIONS), n_envs=n_envs)
    rng = np.random.default_rng(seed)
    episode = [0] * n_envs
    t = [0] * n_envs
    completed: list[dict[str, Any]] = []  # in completion order
    current = [
        {"obs": [observation(i, 0, 0)], "action": [0], "reward": [0.0], "terminated": [False]} for i in range(n_envs)
    ]
    steps = max((sum(ls) for ls in lengths), default=0) + 3
    for _ in range(steps):
        obs = np.stack([observation(i, episode[i], t[i]) for i in range(n_envs)])
        actions = rng.integers(N_ACTIONS, size=n_envs)
        rewards = rng.normal(size=n_envs).astype(np.float32)
        done = np.zeros(n_envs, dtype=bool)
        for i in range(n_envs):  # an env past its plan plays one endless episode (stays unfinished)
            plan = lengths[i]
            done[i] = episode[i] < len(plan) and t[i] + 1 == plan[episode[i]]
        terminated = done & (rng.random(n_envs) < 0.5)
        next_obs = np.stack([observation(i, episode[i], t[i] + 1) for i in range(n_envs)])
        buffer.add(obs, next_obs, actions, rewards, terminated, done)
        for i in range(n_envs):
            record = current[i]
            record["obs"].append(next_obs[i])
            record["action"].append(int(actions[i]) + 1)  # 0 marks "no action" at t = 0
            record["reward"].append(float(rewards[i]))
            record["terminated"].append(bool(terminated[i]))
            t[i] += 1
            if done[i]:
                completed.append(record)
                episode[i] += 1
                t[i] = 0
                current[i] = {
                    "obs": [observation(i, episode[i], 0)],
                    "action": [0],
                    "reward": [0.0],
                    "terminated": [False],
                }
    return buffer, completed


@settings(max_examples=150, deadline=None)
@given(buffer_plans())
def test_buffer_stores_evicts_and_counts(plan):
    buffer, completed = play_plan(*plan)
    capacity = plan[2]
    assert buffer.num_episodes_added == len(completed)
    kept = completed[len(completed) - len(buffer) :]  # eviction drops the oldest first
    assert len(buffer) == len(kept)
    sizes = [len(ep["obs"]) for ep in kept]
    assert buffer.num_entries == sum(sizes)
    # within capacity, except that the newest meta-episode is always kept even if it alone is larger
    assert buffer.num_entries <= capacity or len(buffer) == 1
    if len(buffer) < len(completed):  # something was evicted: one more episode would not have fitted
        previous = completed[len(completed) - len(buffer) - 1]
        assert buffer.num_entries + len(previous["obs"]) > capacity
    for stored, expected in zip(buffer.episodes, kept, strict=True):
        np.testing.assert_array_equal(stored["obs"], np.stack(expected["obs"]))
        one_hot = np.zeros((len(expected["action"]), N_ACTIONS), dtype=np.float32)
        for k, a in enumerate(expected["action"]):
            if a:
                one_hot[k, a - 1] = 1.0
        np.testing.assert_array_equal(stored["action"], one_hot)
        np.testing.assert_array_equal(stored["reward"], np.array(expected["reward"], dtype=np.float32))
        np.testing.assert_array_equal(stored["terminated"], expected["terminated"])
    expected_bytes = sum(n * (3 * 4 + N_ACTIONS * 4 + 4 + 1) for n in sizes)
    unfinished = sum(len(entries) for entries in buffer._open if entries)
    assert buffer.nbytes == expected_bytes + unfinished * (3 * 4 + N_ACTIONS * 4 + 5)


@settings(max_examples=100, deadline=None)
@given(buffer_plans(), st.integers(1, 16), st.integers(1, 6), st.integers(0, 1000))
def test_buffer_samples_prefixes_and_windows_of_stored_episodes(plan, length, batch_size, seed):
    buffer, _ = play_plan(*plan)
    if len(buffer) == 0:
        return
    stored = {tuple(ep["obs"][0, :2]): ep for ep in buffer.episodes}  # (env, episode) -> episode
    rng = np.random.default_rng(seed)
    for batch, prefix in (
        (buffer.sample_prefixes(batch_size, length, rng), True),
        (buffer.sample_windows(batch_size, length, rng), False),
    ):
        assert batch.obs.shape == (batch_size, length, 3) and batch.mask.shape == (batch_size, length)
        assert batch.is_first[:, 0].all() and not batch.is_first[:, 1:].any()
        for b in range(batch_size):
            n = int(batch.mask[b].sum())
            assert batch.mask[b, :n].all() and not batch.mask[b, n:].any()  # valid steps first
            episode = stored[tuple(batch.obs[b, 0, :2])]
            start = int(batch.obs[b, 0, 2])
            assert start == 0 if prefix else 0 <= start <= max(len(episode["obs"]) - length, 0)
            assert n == min(length, len(episode["obs"]) - start)
            np.testing.assert_array_equal(batch.obs[b, :n], episode["obs"][start : start + n])
            np.testing.assert_array_equal(batch.action[b, :n], episode["action"][start : start + n])
            np.testing.assert_array_equal(batch.reward[b, :n], episode["reward"][start : start + n])
            assert not batch.obs[b, n:].any() and not batch.reward[b, n:].any()  # zero padding


# -- meta-episode env bookkeeping ---------------------------------------------------------------
class ScriptedTask(TaskEnv[int]):
    """A task env whose sub-episode ends (terminates or truncates) at scripted steps; reward = task + step."""

    reward_bounds = (0.0, 1000.0)

    def __init__(self, ends: list[tuple[int, bool]]):
        self.observation_space = spaces.Box(0.0, 1000.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.ends = ends  # per sub-episode: (length at which the task env ends it, terminated?)
        self._sub_episode = -1
        self._t = 0

    def sample_tasks(self, n: int) -> list[int]:
        return [int(x) for x in self.np_random.integers(0, 10, size=n)]

    def set_task(self, task: int) -> None:
        self._task = task
        self._sub_episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._sub_episode += 1
        self._t = 0
        return np.array([self._t], dtype=np.float32), {}

    def step(self, action):
        self._t += 1
        end, terminal = self.ends[self._sub_episode] if self._sub_episode < len(self.ends) else (10**9, False)
        reward = float(self.task + self._t)
        stop = self._t >= end
        return np.array([self._t], dtype=np.float32), reward, stop and terminal, stop and not terminal, {}


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(1, 10), st.booleans()), max_size=4),
    st.integers(0, 2**16),
)
def test_meta_episode_bookkeeping(num_sub_episodes, sub_episode_length, ends, seed):
    env = MetaEpisodeEnv(ScriptedTask(ends), num_sub_episodes, sub_episode_length)
    horizon = num_sub_episodes * sub_episode_length
    obs, info = env.reset(seed=seed)
    task = env.task
    np.testing.assert_array_equal(obs, [0.0, 0.0, 0.0])
    expected_lengths = []
    for k in range(num_sub_episodes):
        end, _terminal = ends[k] if k < len(ends) else (10**9, False)
        expected_lengths.append(min(end, sub_episode_length))
    t, done, k, sub_t = 0, False, 0, 0
    while not done:
        obs, reward, terminated, truncated, info = env.step(0)
        t += 1
        sub_t += 1
        assert env.observation_space.contains(obs)
        assert reward == task + sub_t
        assert obs[-2] == reward and obs[-1] == np.float32(t / horizon)  # r_{t-1} and time, never reset
        assert info["sub_episode"] == k
        done = terminated or truncated
        ended = sub_t == expected_lengths[k]
        assert info["sub_episode_end"] == ended
        assert done == (ended and k == num_sub_episodes - 1)
        if ended and not done:
            assert obs[0] == 0.0  # first observation of the next sub-episode
            k, sub_t = k + 1, 0
        else:
            assert obs[0] == sub_t
    assert t == sum(expected_lengths) <= horizon
    last_end = ends[num_sub_episodes - 1] if num_sub_episodes <= len(ends) else (10**9, False)
    assert terminated == (last_end[1] and last_end[0] <= sub_episode_length)
    assert truncated == (not terminated)
    assert info["sub_episode_lengths"] == expected_lengths
    assert info["sub_episode_returns"] == [sum(task + s for s in range(1, n + 1)) for n in expected_lengths]
