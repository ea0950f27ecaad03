"""Bring your own meta-RL env: a TaskEnv plus MetaEpisodeEnv, registered and trained with MAMBA.

The task here is a hidden "bandit arm" on a line: the agent walks on cells 0..6 and
one hidden cell pays +1 per step spent on it. A good meta-RL agent searches in the
first sub-episode and walks straight to the remembered cell in the next ones.

    python examples/custom_env.py --steps 3000
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mamba import MAMBA
from sb3_mamba.presets import CPU_QUICKSTART
from sb3_mamba_envs import MetaEpisodeEnv, TaskEnv


class HiddenCellTask(TaskEnv[int]):
    """One sub-episode: start in the middle of 7 cells, move left/right/stay; the hidden cell pays 1."""

    reward_bounds = (0.0, 1.0)

    def __init__(self, num_cells: int = 7):
        self.num_cells = num_cells
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)  # left, stay, right
        self._cell = num_cells // 2

    def sample_tasks(self, n: int) -> list[int]:
        return [int(c) for c in self.np_random.integers(self.num_cells, size=n)]  # from the seeded generator

    def set_task(self, task: int) -> None:
        if not 0 <= int(task) < self.num_cells:
            raise ValueError(f"task must be a cell in [0, {self.num_cells}), got {task!r}")
        self._task = int(task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cell = self.num_cells // 2
        return self._obs(), {}

    def step(self, action: int):
        self._cell = int(np.clip(self._cell + int(action) - 1, 0, self.num_cells - 1))
        reward = 1.0 if self._cell == self.task else 0.0
        return self._obs(), reward, False, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([self._cell / (self.num_cells - 1)], dtype=np.float32)


def make_hidden_cell(num_sub_episodes: int = 2, sub_episode_length: int = 10) -> MetaEpisodeEnv:
    return MetaEpisodeEnv(HiddenCellTask(), num_sub_episodes, sub_episode_length)


gym.register(id="HiddenCell-v0", entry_point=make_hidden_cell)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    env = make_vec_env("HiddenCell-v0", n_envs=4, seed=0)
    random_model_env = gym.make("HiddenCell-v0")
    totals = []
    for seed in range(50):
        random_model_env.reset(seed=seed)
        random_model_env.action_space.seed(seed)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = random_model_env.step(random_model_env.action_space.sample())
            total += reward
            done = terminated or truncated
        totals.append(total)
    random_return = float(np.mean(totals))
    model = MAMBA("RSSMPolicy", env, seed=0, **CPU_QUICKSTART)
    model.learn(args.steps)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=20)
    print(f"HiddenCell-v0: MAMBA {mean:.2f}, random {random_return:.2f} (best possible ~{2 * 10 - 3})")


if __name__ == "__main__":
    main()
