"""Point Robot Navigation (PRN) and its windy variant (paper App. C).

A 2-D point moves by ``0.1 * a`` per step (``a`` in ``[-1, 1]^2``). The goal is
on the upper unit semicircle, angle ~ U(0, pi); the reward is sparse:
``1 - d`` inside the goal radius 0.2 (d = distance to the goal), else 0.
Each sub-episode starts at the origin. K x T = 3 x 100 (the reference
implementation's setting; the paper's text says 2 sub-episodes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, reject_unknown_kwargs, require, require_int
from sb3_mamba_envs.rendering import Canvas, sub_episode_color

STEP_SIZE = 0.1


class PlanarPointTask(TaskEnv[np.ndarray]):
    """Shared state of the 2-D point envs: position, per-sub-episode trails, rendering frame.

    Subclasses define ``sample_tasks``, ``set_task``, ``_initial_position``,
    ``_move``, ``_reward`` and ``_draw_task``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    reward_bounds = (0.0, 1.0)
    render_extent = (-1.5, 1.5, -1.0, 2.0)

    def __init__(self, max_distance: float, render_mode: str | None = None, render_size: int = 256):
        self.observation_space = spaces.Box(-max_distance, max_distance, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self.render_size = render_size
        self._max_distance = max_distance
        self._position = np.zeros(2)
        self._trails: list[list[np.ndarray]] = []

    def _initial_position(self) -> np.ndarray:
        return np.zeros(2)

    def _move(self, action: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reward(self, position: np.ndarray) -> float:
        raise NotImplementedError

    def _draw_task(self, canvas: Canvas) -> None:
        raise NotImplementedError

    def _start_meta_episode(self) -> None:
        self._trails = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task  # noqa: B018 - raises a clear error if no task was set
        self._position = self._initial_position()
        self._trails.append([self._position.copy()])
        return self._observation(), {}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        position = self._move(action)
        self._position = np.clip(position, -self._max_distance, self._max_distance)
        self._trails[-1].append(self._position.copy())
        reward = self._reward(self._position)
        return self._observation(), reward, False, False, {}

    def _observation(self) -> np.ndarray:
        return self._position.astype(np.float32)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        canvas = Canvas(self.render_size, self.render_extent)
        self._draw_task(canvas)
        for k, trail in enumerate(self._trails):
            canvas.trail(np.asarray(trail), 0.015, sub_episode_color(k))
        canvas.disc(self._position, 0.05, (0, 0, 0))
        return canvas.image


class PointRobotTask(PlanarPointTask):
    """One sub-episode of PRN for a goal ``task = (x, y)``; ``wind_std > 0`` adds Gaussian action noise."""

    def __init__(
        self,
        goal_radius: float = 0.2,
        wind_std: float = 0.0,
        max_distance: float = 10.0,
        render_mode: str | None = None,
    ):
        super().__init__(max_distance=max_distance, render_mode=render_mode)
        self.goal_radius = goal_radius
        self.wind_std = wind_std

    def sample_tasks(self, n: int) -> list[np.ndarray]:
        angles = self.np_random.uniform(0.0, np.pi, size=n)
        return [np.array([np.cos(a), np.sin(a)]) for a in angles]

    def set_task(self, task: np.ndarray) -> None:
        goal = np.asarray(task, dtype=np.float64)
        if goal.shape != (2,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"A point-robot task is a goal position of shape (2,), got {task!r}.")
        self._task = goal
        self._start_meta_episode()

    def _move(self, action: np.ndarray) -> np.ndarray:
        if self.wind_std > 0:
            # wind is added to the action before clipping (reference implementation)
            action = np.clip(action + self.np_random.normal(0.0, self.wind_std, size=2), -1.0, 1.0)
        return self._position + STEP_SIZE * action

    def _reward(self, position: np.ndarray) -> float:
        distance = float(np.linalg.norm(position - self.task))
        return 1.0 - distance if distance <= self.goal_radius else 0.0

    def _draw_task(self, canvas: Canvas) -> None:
        canvas.ring(1.0, 0.01, (200, 200, 200), angle_range=(0.0, np.pi))
        canvas.disc(self.task, self.goal_radius, (190, 235, 190))


class MetaPointRobot(MetaEpisodeEnv[np.ndarray]):
    """``MetaPointRobot-v0`` (and ``MetaPointRobotWind-v0`` with ``wind_std=0.3``).

    :param num_sub_episodes: K (default 3).
    :param sub_episode_length: T (default 100).
    :param goal_radius: radius of the rewarding disc around the goal (default 0.2).
    :param wind_std: std of the Gaussian noise added to each action dimension (default 0: no wind).
    :param render_mode: ``"rgb_array"`` or None.
    """

    def __init__(
        self,
        num_sub_episodes: int = 3,
        sub_episode_length: int = 100,
        goal_radius: float = 0.2,
        wind_std: float = 0.0,
        render_mode: str | None = None,
        **unknown: Any,
    ):
        name = type(self).__name__
        reject_unknown_kwargs(
            name, unknown, ["num_sub_episodes", "sub_episode_length", "goal_radius", "wind_std", "render_mode"]
        )
        require(0 < goal_radius <= 2, name, "goal_radius", goal_radius, "must be in (0, 2]")
        require(0 <= wind_std < np.inf, name, "wind_std", wind_std, "must be a finite number >= 0")
        sub_episode_length = require_int(name, "sub_episode_length", sub_episode_length)
        task_env = PointRobotTask(
            goal_radius=goal_radius,
            wind_std=wind_std,
            max_distance=STEP_SIZE * sub_episode_length,
            render_mode=render_mode,
        )
        super().__init__(task_env, num_sub_episodes, sub_episode_length, render_mode=render_mode)
