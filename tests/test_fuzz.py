"""Fuzzing every env ID: random seeds, random valid and invalid actions, many steps.

The only exception allowed is the documented ``ValueError`` for an action
outside the action space, and a rejected action must not change the env.
Observations stay finite and inside the observation space; rewards stay
finite and inside ``reward_bounds``.
"""

from __future__ import annotations

import zlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from sb3_mamba_envs import ENV_IDS
from tests.rendering import env_params

STEPS = {"MetaReacher": 1500}  # MuJoCo envs are the slowest; others get 3000 steps


def bad_actions(space: spaces.Space, rng: np.random.Generator) -> list:
    if isinstance(space, spaces.Discrete):
        return [space.n, -1, 1.5, np.array([0, 1]), "up", None, np.float32(0.0)]
    low, high = space.low, space.high
    return [
        high + 0.5,
        low - rng.uniform(0.1, 10, size=space.shape),
        np.full(space.shape, np.nan),
        np.full(space.shape, np.inf),
        np.zeros(space.shape[0] + 1),
        "left",
        None,
        np.zeros((1, *space.shape)),
    ]


def check_step_output(env: gym.Env, obs, reward) -> None:
    leaves = obs.values() if isinstance(obs, dict) else [obs]
    for leaf in leaves:
        assert np.all(np.isfinite(leaf)), leaf
    assert env.observation_space.contains(obs), obs
    low, high = env.unwrapped.task_env.reward_bounds
    assert np.isfinite(reward) and low - 1e-6 <= reward <= high + 1e-6, reward


@pytest.mark.parametrize("env_id", env_params())
def test_fuzz_random_and_invalid_actions(env_id):
    rng = np.random.default_rng(zlib.crc32(env_id.encode()))
    env = gym.make(env_id)
    env.action_space.seed(int(rng.integers(2**31)))
    steps = STEPS.get(env_id.rsplit("-", 2)[0], 3000)
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    rejected = 0
    for _ in range(steps):
        if rng.random() < 0.05:  # an invalid action: ValueError, and the env is unchanged
            before = env.unwrapped.get_state()
            bad = bad_actions(env.action_space, rng)
            with pytest.raises(ValueError):
                env.step(bad[rng.integers(len(bad))])
            after = env.unwrapped.get_state()
            assert after["t"] == before["t"] and after["rng"] == before["rng"]
            rejected += 1
            continue
        if rng.random() < 0.5 and isinstance(env.action_space, spaces.Box):  # the bounds themselves are valid
            action = np.where(rng.random(env.action_space.shape) < 0.5, env.action_space.low, env.action_space.high)
        else:
            action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        check_step_output(env, obs, reward)
        if terminated or truncated:
            obs, _ = env.reset(seed=int(rng.integers(2**31)) if rng.random() < 0.5 else None)
            check_step_output(env, obs, 0.0)
    assert rejected > 0
    env.close()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([i for i in ENV_IDS if not i.startswith("MetaReacher")]),
    st.one_of(
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.none(),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    ),
)
def test_arbitrary_action_values_are_accepted_or_rejected_with_value_error(env_id, action):
    env = gym.make(env_id)
    env.reset(seed=0)
    before = env.unwrapped.get_state()
    try:
        obs, reward, *_ = env.step(action)
    except ValueError:
        assert env.unwrapped.get_state()["t"] == before["t"]
    else:
        check_step_output(env, obs, reward)
