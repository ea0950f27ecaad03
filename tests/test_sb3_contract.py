"""What SB3's and sb3-contrib's own tests expect of an algorithm and its policy, ported to MAMBA."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, LogEveryNTimesteps
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA
from sb3_mamba.policies import RSSMPolicy
from tests.test_fidelity import WideBoxEnv
from tests.test_mamba import TINY, rooms_env, tiny_model


def test_policy_save_and_load_rebuild_the_same_networks(tmp_path):
    model = tiny_model(rooms_env())
    model.learn(60)
    model.policy.save(tmp_path / "policy.pth")
    loaded = RSSMPolicy.load(tmp_path / "policy.pth")
    assert loaded.world_model.rssm.deter_dim == 32
    for (name, a), (_, b) in zip(model.policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    obs = model.env.reset()
    torch.manual_seed(0)
    expected, _ = model.policy.predict(obs, deterministic=True)
    torch.manual_seed(0)
    actual, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    with pytest.raises(ValueError, match="normalize_images"):
        RSSMPolicy(model.observation_space, model.action_space, normalize_images=True)


class RolloutCounter(BaseCallback):
    def __init__(self):
        super().__init__()
        self.starts = self.ends = 0

    def _on_rollout_start(self) -> None:
        self.starts += 1

    def _on_rollout_end(self) -> None:
        self.ends += 1

    def _on_step(self) -> bool:
        return True


def test_rollout_hooks_bracket_each_collection_and_log_every_n_timesteps_works():
    model = tiny_model(rooms_env())
    counter = RolloutCounter()
    model.learn(200, callback=[counter, LogEveryNTimesteps(n_steps=50)])
    assert model._n_updates > 0
    assert counter.starts == counter.ends >= model._n_updates // 2  # one rollout per round of updates
    model.dump_logs()  # SB3's public hook


def test_stats_window_size_and_gamma():
    model = tiny_model(rooms_env(), stats_window_size=7, discount=0.9)
    model.learn(60)
    assert model.ep_info_buffer.maxlen == 7
    assert model.gamma == 0.9


def test_predict_single_discrete_observation_returns_an_ndarray_and_rejects_obs_info_tuples():
    env = gym.make("MetaRooms-1-v0", sub_episode_length=10)
    model = tiny_model(env)
    obs, info = env.reset(seed=0)
    action, _state = model.predict(obs)
    assert isinstance(action, np.ndarray) and action.shape == ()
    assert env.action_space.contains(int(action))
    with pytest.raises(ValueError, match="VecEnv API"):
        model.predict((obs, info))


def test_learning_rate_schedules_are_applied_and_logged():
    seen = {}

    def schedule(progress_remaining: float) -> float:
        return 1e-3 * progress_remaining

    model = tiny_model(rooms_env(), learning_rate=schedule, actor_lr=lambda p: 2e-4 * p, critic_lr=5e-5)
    model.learn(200)
    progress = model._current_progress_remaining
    assert model._n_updates > 0 and progress < 1
    seen["model"] = model.policy.model_optimizer.param_groups[0]["lr"]
    seen["actor"] = model.policy.actor_optimizer.param_groups[0]["lr"]
    seen["critic"] = model.policy.critic_optimizer.param_groups[0]["lr"]
    assert 0 < seen["model"] < 1e-3 and 0 < seen["actor"] < 2e-4  # the schedules moved them
    assert seen["critic"] == 5e-5
    model._current_progress_remaining = 0.5
    model.train(1)  # logs the rates it applies (the logger was dumped at the end of learn)
    assert model.policy.model_optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert model.logger.name_to_value["train/learning_rate"] == pytest.approx(5e-4)
    assert model.logger.name_to_value["train/actor_lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="learning_rate"):
        tiny_model(rooms_env(), learning_rate="fast")


class GridBoxEnv(WideBoxEnv):
    """WideBoxEnv with a (2, 2) Box action space."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.Box(-1.0, 1.0, (2, 2), np.float32)

    def step(self, action):
        assert np.shape(action) == (2, 2)
        return super().step(np.asarray(action).reshape(-1)[:1])


def test_multi_dimensional_box_actions_train_and_act():
    env = make_vec_env(GridBoxEnv, n_envs=2)
    model = MAMBA("RSSMPolicy", env, seed=0, **TINY)
    model.learn(60)
    assert model.replay_buffer.episodes[0]["action"].shape[-1] == 4
    action, _ = model.predict(env.reset())
    assert action.shape == (2, 2, 2)


def test_silent_mistakes_warn():
    model = tiny_model(rooms_env(), prefill_episodes=10)
    with pytest.warns(UserWarning, match="no gradient update"):
        model.learn(20)
    assert model._n_updates == 0
    with pytest.warns(UserWarning, match="does not look like a meta-RL env"):
        MAMBA("RSSMPolicy", make_vec_env("CartPole-v1", n_envs=1), **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model(rooms_env()).learn(60)  # a meta env, trained past its prefill: no warning
