"""The paper's evaluation protocol: fixed seeded tasks, per-sub-episode returns, best model kept."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_mamba import MAMBA, MetaEvalCallback, evaluate_meta_policy
from tests.test_mamba import TINY

ENV = "MetaPointRobot-v0"
SHORT = {"sub_episode_length": 10}  # H = 30


class ConstantPolicy:
    """A recurrent-predict model that always pushes right and records the calls it gets."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, object]] = []

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        self.calls.append((np.array(episode_start), state))
        n = len(obs)
        return np.tile(np.array([1.0, 0.0], np.float32), (n, 1)), np.arange(n) + (0 if state is None else state)


def test_same_seed_same_tasks_and_sub_episodes_sum_to_the_return():
    first = evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=7, seed=3, n_envs=3, env_kwargs=SHORT)
    again = evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=7, seed=3, n_envs=4, env_kwargs=SHORT)
    other = evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=7, seed=50, n_envs=3, env_kwargs=SHORT)
    np.testing.assert_array_equal(first.returns, again.returns)  # the task set does not depend on batching
    assert first.sub_episode_returns.shape == (7, 3)
    np.testing.assert_allclose(first.sub_episode_returns.sum(1), first.returns, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(first.returns, other.returns)
    np.testing.assert_array_equal(first.task_seeds, np.arange(3, 10))
    assert first.mean == pytest.approx(first.returns.mean()) and first.std == pytest.approx(first.returns.std())
    assert len(first.sub_episode_stats()) == 3 and first.ci95 >= 0


def test_each_task_gets_the_task_of_its_seed():
    result = evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=2, seed=11, env_kwargs=SHORT)
    env = gym.make(ENV, **SHORT)
    env.reset(seed=12)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(np.array([1.0, 0.0], np.float32))
        total += reward
        done = terminated or truncated
    assert result.returns[1] == pytest.approx(total)


def test_recurrent_state_is_carried_and_reset_per_batch_of_tasks():
    policy = ConstantPolicy()
    evaluate_meta_policy(policy, ENV, n_tasks=4, seed=0, n_envs=2, env_kwargs=SHORT)
    starts = [episode_start for episode_start, _ in policy.calls]
    assert len(policy.calls) == 2 * 30  # two batches of 2 tasks, 30 steps each
    assert starts[0].all() and starts[30].all() and not any(s.any() for s in starts[1:30] + starts[31:])
    assert policy.calls[0][1] is None and policy.calls[1][1] is not None


def test_evaluates_mamba_and_recurrent_ppo():
    from sb3_contrib import RecurrentPPO

    env = make_vec_env(ENV, n_envs=2, seed=0, env_kwargs=SHORT)
    for model in (MAMBA("RSSMPolicy", env, seed=0, **TINY), RecurrentPPO("MlpLstmPolicy", env, n_steps=16)):
        for deterministic in (True, False):
            result = evaluate_meta_policy(model, ENV, n_tasks=3, deterministic=deterministic, env_kwargs=SHORT)
            assert result.returns.shape == (3,) and np.isfinite(result.returns).all()


def test_an_oracle_scores_what_it_scores_on_the_same_seeded_tasks():
    from sb3_mamba_envs.oracles import oracle_policy, play_scripted

    made: list[gym.Env] = []

    def make() -> gym.Env:
        made.append(gym.make(ENV, **SHORT))
        return made[-1]

    class Oracle:  # knows the task of the env the evaluator plays in each slot
        def predict(self, obs, state=None, episode_start=None, deterministic=False):
            return np.stack([oracle_policy(env)(o) for env, o in zip(made, obs, strict=True)]), None

    result = evaluate_meta_policy(Oracle(), make, n_tasks=5, seed=0, n_envs=5)
    expected, expected_sub, _ = play_scripted(gym.make(ENV, **SHORT), "oracle", episodes=5, seed=0)
    np.testing.assert_allclose(result.returns, expected, rtol=1e-6)
    np.testing.assert_allclose(result.sub_episode_returns, expected_sub, rtol=1e-6)
    assert result.mean > evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=5, env_kwargs=SHORT).mean


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_tasks"):
        evaluate_meta_policy(ConstantPolicy(), ENV, n_tasks=0)
    with pytest.raises(TypeError, match="env ID or a function"):
        evaluate_meta_policy(ConstantPolicy(), gym.make(ENV), n_tasks=1)
    with pytest.raises(ValueError, match="eval_freq"):
        MetaEvalCallback(ENV, eval_freq=0)


def test_callback_logs_keeps_the_best_model_and_resumes_its_history(tmp_path):
    env = make_vec_env(ENV, n_envs=2, seed=0, env_kwargs=SHORT)
    model = MAMBA("RSSMPolicy", env, seed=0, **TINY)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    callback = MetaEvalCallback(
        ENV,
        n_tasks=3,
        eval_freq=4,
        env_kwargs=SHORT,
        n_envs=3,
        best_model_save_path=str(tmp_path / "best"),
        log_path=str(tmp_path / "eval"),
    )
    model.learn(300, callback=callback)  # 10 meta-episodes of 30 steps: evaluations at 0, 4 and 8
    assert len(callback.results) == 3
    assert (tmp_path / "best" / "best_model.zip").is_file()
    header = (tmp_path / "log" / "progress.csv").read_text().splitlines()[0].split(",")
    for key in (
        "eval/mean_reward",
        "eval/std_reward",
        "eval/ci95",
        "eval/sub_episode_return_2",
        "eval/best_mean_reward",
    ):
        assert key in header, key
    saved = np.load(tmp_path / "eval" / "evaluations.npz")
    assert saved["results"].shape == (3, 3) and saved["sub_episode_results"].shape == (3, 3, 3)
    assert callback.best_mean_reward == max(r.mean() for r in saved["results"])

    model.save(tmp_path / "model")
    resumed = MAMBA.load(tmp_path / "model", env=env)
    callback2 = MetaEvalCallback(
        ENV,
        n_tasks=3,
        eval_freq=4,
        env_kwargs=SHORT,
        best_model_save_path=str(tmp_path / "best"),
        log_path=str(tmp_path / "eval"),
    )
    resumed.learn(120, callback=callback2, reset_num_timesteps=False)  # meta-episodes 10..13: one more at 12
    assert len(callback2.results) == 4 and callback2.timesteps[:3] == callback.timesteps
