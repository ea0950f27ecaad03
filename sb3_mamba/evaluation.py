"""Meta-RL evaluation as the paper reports it: a fixed, seeded task set, one meta-episode per task.

The reference evaluates every 200 collected meta-episodes on a fixed set of
20 tasks (100 on Rooms), keeps the best model, and reports a final test of
that model on 1000 fresh tasks, with the actor's mode as action. Here:

* :func:`evaluate_meta_policy` plays one meta-episode on each of ``n_tasks``
  tasks (task ``i`` is the env reset with ``seed + i``: the same tasks for every
  model and every call) and returns a :class:`MetaEvalResult` with the
  meta-episode returns and each sub-episode's return per task.
* :class:`MetaEvalCallback` runs it during training, logs ``eval/*`` and keeps
  the best model.

Works with any model whose ``predict(obs, state, episode_start, deterministic)``
carries a recurrent state: MAMBA and sb3-contrib's ``RecurrentPPO`` (RL^2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

EnvFactory = Callable[[], gym.Env]


@dataclass
class MetaEvalResult:
    """Returns of one meta-episode per task.

    :param returns: (n_tasks,) meta-episode returns.
    :param sub_episode_returns: (n_tasks, K) return of each sub-episode (NaN where an env does not
        report ``info["sub_episode_returns"]``).
    :param task_seeds: (n_tasks,) the reset seed of each task.
    """

    returns: np.ndarray
    sub_episode_returns: np.ndarray
    task_seeds: np.ndarray

    @property
    def n_tasks(self) -> int:
        return len(self.returns)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def ci95(self) -> float:
        """Half-width of the normal 95% confidence interval of the mean over tasks."""
        return float(1.96 * np.std(self.returns, ddof=1) / np.sqrt(self.n_tasks)) if self.n_tasks > 1 else 0.0

    def sub_episode_stats(self) -> list[dict[str, float]]:
        """Per sub-episode k: mean, std and 95% CI half-width over tasks."""
        stats = []
        for column in self.sub_episode_returns.T:
            n = len(column)
            ci = 1.96 * np.std(column, ddof=1) / np.sqrt(n) if n > 1 else 0.0
            stats.append({"mean": float(np.mean(column)), "std": float(np.std(column)), "ci95": float(ci)})
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "ci95": self.ci95,
            "n_tasks": self.n_tasks,
            "sub_episodes": self.sub_episode_stats(),
            "returns": self.returns.tolist(),
            "sub_episode_returns": self.sub_episode_returns.tolist(),
            "task_seeds": self.task_seeds.tolist(),
        }


def _env_factory(env: str | EnvFactory, env_kwargs: dict[str, Any] | None) -> EnvFactory:
    if isinstance(env, str):
        return lambda: gym.make(env, **(env_kwargs or {}))
    if isinstance(env, gym.Env):
        raise TypeError("Pass an env ID or a function that makes an env: evaluate_meta_policy runs several copies.")
    if not callable(env):
        raise TypeError(f"env must be an env ID or a callable returning a gymnasium.Env, got {type(env).__name__}.")
    return env


def _stack(observations: list[Any]) -> Any:
    if isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return np.stack(observations)


def evaluate_meta_policy(
    model: Any,
    env: str | EnvFactory,
    n_tasks: int = 20,
    seed: int = 0,
    deterministic: bool = True,
    n_envs: int = 10,
    env_kwargs: dict[str, Any] | None = None,
) -> MetaEvalResult:
    """Play one meta-episode on each of ``n_tasks`` fixed tasks and return their returns.

    :param model: anything with SB3's recurrent ``predict(obs, state, episode_start, deterministic)``
        (MAMBA, RecurrentPPO).
    :param env: an env ID, or a function returning a new env (one Gymnasium episode must be one
        meta-episode, as for :mod:`sb3_mamba_envs`).
    :param n_tasks: number of tasks (20; the reference's evaluation set, 100 on Rooms, 1000 for the
        final test).
    :param seed: task ``i`` is the env reset with ``seed + i`` (0): the same task set for every call.
    :param deterministic: the actor's mode (True, as the reference evaluates) or sampled actions.
    :param n_envs: meta-episodes played side by side (10).
    :param env_kwargs: keyword arguments of ``gym.make`` when ``env`` is an ID.
    """
    if not isinstance(n_tasks, (int, np.integer)) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}.")
    if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}.")
    make = _env_factory(env, env_kwargs)
    width = min(n_envs, n_tasks)
    envs = [make() for _ in range(width)]
    returns = np.zeros(n_tasks)
    sub_returns: list[list[float] | None] = [None] * n_tasks
    try:
        for first in range(0, n_tasks, width):
            tasks = list(range(first, min(first + width, n_tasks)))
            observations = [envs[j].reset(seed=seed + task)[0] for j, task in enumerate(tasks)]
            running = np.ones(len(tasks), dtype=bool)
            episode_start = np.ones(len(tasks), dtype=bool)
            state = None
            while running.any():
                actions, state = model.predict(
                    _stack(observations), state=state, episode_start=episode_start, deterministic=deterministic
                )
                episode_start = np.zeros(len(tasks), dtype=bool)
                for j, task in enumerate(tasks):
                    if not running[j]:
                        continue  # finished: its action is ignored, its last observation kept
                    obs, reward, terminated, truncated, info = envs[j].step(actions[j])
                    returns[task] += float(reward)
                    observations[j] = obs
                    if terminated or truncated:
                        running[j] = False
                        sub_returns[task] = list(info.get("sub_episode_returns", [])) or None
    finally:
        for env_ in envs:
            env_.close()
    width_k = max((len(r) for r in sub_returns if r is not None), default=0)
    sub = np.full((n_tasks, width_k), np.nan)
    for task, values in enumerate(sub_returns):
        if values is not None:
            sub[task, : len(values)] = values
    return MetaEvalResult(returns, sub, np.arange(seed, seed + n_tasks))


class MetaEvalCallback(BaseCallback):
    """Evaluate on a fixed task set every ``eval_freq`` collected meta-episodes; keep the best model.

    Logs ``eval/mean_reward``, ``eval/std_reward``, ``eval/ci95``, ``eval/sub_episode_return_k``
    (and ``_std``), ``eval/best_mean_reward``; with ``best_model_save_path`` the best model is saved
    there as ``best_model.zip`` (the reference's ``best_model.pt``), and with ``log_path`` every
    evaluation is appended to ``evaluations.npz`` (SB3's ``EvalCallback`` layout: timesteps,
    results (n_evals, n_tasks), plus sub_episode_results).

    :param eval_env: env ID or function returning an env (see :func:`evaluate_meta_policy`).
    :param n_tasks: tasks of the fixed evaluation set (20; 100 on Rooms).
    :param eval_freq: collected meta-episodes (over all training envs) between evaluations (200).
    :param seed: seed of the evaluation task set (a different one from the final test's).
    :param deterministic: actor mode (True) or sampled actions.
    :param n_envs: meta-episodes played side by side (10).
    :param env_kwargs: ``gym.make`` kwargs when ``eval_env`` is an ID.
    :param best_model_save_path: folder for ``best_model.zip`` (None: not saved).
    :param log_path: folder for ``evaluations.npz`` (None: not written).
    :param verbose: 1 prints each evaluation.
    """

    def __init__(
        self,
        eval_env: str | EnvFactory,
        n_tasks: int = 20,
        eval_freq: int = 200,
        seed: int = 10_000,
        deterministic: bool = True,
        n_envs: int = 10,
        env_kwargs: dict[str, Any] | None = None,
        best_model_save_path: str | None = None,
        log_path: str | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if eval_freq < 1:
            raise ValueError(f"eval_freq must be >= 1 meta-episode, got {eval_freq}.")
        self.eval_env, self.n_tasks, self.eval_freq, self.seed = eval_env, n_tasks, eval_freq, seed
        self.deterministic, self.n_envs, self.env_kwargs = deterministic, n_envs, env_kwargs
        self.best_model_save_path, self.log_path = best_model_save_path, log_path
        self.best_mean_reward = -np.inf
        self.meta_episodes = 0
        self._next_eval = 0
        self.timesteps: list[int] = []
        self.results: list[np.ndarray] = []
        self.sub_episode_results: list[np.ndarray] = []

    def _init_callback(self) -> None:
        # A resumed run (MAMBA counts its meta-episodes and saves the count) continues its evaluation
        # history from evaluations.npz: the best model so far and the evaluation schedule carry over.
        self.meta_episodes = int(getattr(self.model, "_episode_num", 0))
        self._next_eval = (self.meta_episodes // self.eval_freq + 1) * self.eval_freq if self.meta_episodes else 0
        path = None if self.log_path is None else os.path.join(self.log_path, "evaluations.npz")
        if self.meta_episodes and path is not None and os.path.exists(path):
            with np.load(path) as saved:
                keep = saved["timesteps"] <= self.model.num_timesteps
                self.timesteps = saved["timesteps"][keep].tolist()
                self.results = list(saved["results"][keep])
                self.sub_episode_results = list(saved["sub_episode_results"][keep])
            if self.results:
                self.best_mean_reward = max(float(np.mean(r)) for r in self.results)

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None:
            self.meta_episodes += int(np.sum(dones))
        # the reference evaluates before its first collection round and every 200 meta-episodes after
        if self.meta_episodes >= self._next_eval:
            self._next_eval = (self.meta_episodes // self.eval_freq + 1) * self.eval_freq
            self.evaluate()
        return True

    def evaluate(self) -> MetaEvalResult:
        """Run one evaluation now, log it and keep the model if it is the best so far."""
        result = evaluate_meta_policy(
            self.model, self.eval_env, self.n_tasks, self.seed, self.deterministic, self.n_envs, self.env_kwargs
        )
        self.logger.record("eval/mean_reward", result.mean)
        self.logger.record("eval/std_reward", result.std)
        self.logger.record("eval/ci95", result.ci95)
        for k, stats in enumerate(result.sub_episode_stats()):
            self.logger.record(f"eval/sub_episode_return_{k}", stats["mean"])
            self.logger.record(f"eval/sub_episode_return_{k}_std", stats["std"])
        self.timesteps.append(self.num_timesteps)
        self.results.append(result.returns)
        self.sub_episode_results.append(result.sub_episode_returns)
        if self.log_path is not None:
            os.makedirs(self.log_path, exist_ok=True)
            np.savez(
                os.path.join(self.log_path, "evaluations.npz"),
                timesteps=np.array(self.timesteps),
                results=np.array(self.results),
                sub_episode_results=np.array(self.sub_episode_results),
            )
        if result.mean > self.best_mean_reward:
            self.best_mean_reward = result.mean
            if self.best_model_save_path is not None:
                os.makedirs(self.best_model_save_path, exist_ok=True)
                self.model.save(os.path.join(self.best_model_save_path, "best_model"))
        self.logger.record("eval/best_mean_reward", self.best_mean_reward)
        if self.verbose:
            print(
                f"Eval at {self.num_timesteps} steps ({self.meta_episodes} meta-episodes): "
                f"{result.mean:.2f} +- {result.std:.2f} over {result.n_tasks} tasks"
            )
        self.logger.dump(self.num_timesteps)
        return result
