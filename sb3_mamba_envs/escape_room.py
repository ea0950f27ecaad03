"""Escape Room (Dorfman et al. 2021; paper App. C).

A point robot starts inside a circular room of radius 1 (uniform angle,
radius ~ U(0, 1)). The only exit is a door: an arc of width pi/8 centred at
angle ~ U(0, pi) on the upper half of the wall. Reward: 1 outside the room,
0 inside. A move that crosses the wall outside the door is pushed back to
radius 0.99 (the reference implementation's rule). K x T = 2 x 60.

The wall also blocks re-entry outside the door (pushed back to radius 1.01);
the reference lets such a move through, which only matters for an agent
that walks back in and is never rewarded for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, reject_unknown_kwargs, require, require_int
from sb3_mamba_envs.point_robot import STEP_SIZE, PlanarPointTask
from sb3_mamba_envs.rendering import Canvas

ROOM_RADIUS = 1.0


def _wrap_angle(angle: float) -> float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _first_crossing(start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray | None:
    """The first point where the segment start->end crosses the circle of ``radius`` (or None)."""
    d = end - start
    a = float(d @ d)
    if a == 0.0:
        return None
    b = 2.0 * float(start @ d)
    c = float(start @ start) - radius**2
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    sq = np.sqrt(disc)
    for s in sorted(((-b - sq) / (2 * a), (-b + sq) / (2 * a))):
        if 0.0 <= s <= 1.0:
            return start + s * d
    return None


class EscapeRoomTask(PlanarPointTask):
    """One sub-episode of Escape Room for a door centred at angle ``task`` (radians, a float)."""

    def __init__(self, door_width: float = np.pi / 8, max_distance: float = 7.0, render_mode: str | None = None):
        super().__init__(max_distance=max_distance, render_mode=render_mode)
        self.door_width = door_width

    def sample_tasks(self, n: int) -> list[float]:
        return [float(a) for a in self.np_random.uniform(0.0, np.pi, size=n)]

    def set_task(self, task: float) -> None:
        angle = np.asarray(task, dtype=np.float64)
        if angle.size != 1 or not np.isfinite(angle).all():
            raise ValueError(f"An escape-room task is the door's centre angle (one float), got {task!r}.")
        self._task = float(angle.reshape(()))
        self._start_meta_episode()

    def in_door(self, point: np.ndarray) -> bool:
        angle = np.arctan2(point[1], point[0])
        return abs(_wrap_angle(angle - self.task)) <= self.door_width / 2

    def _initial_position(self) -> np.ndarray:
        angle = self.np_random.uniform(-np.pi, np.pi)
        radius = self.np_random.uniform(0.0, ROOM_RADIUS)
        return radius * np.array([np.cos(angle), np.sin(angle)])

    def _move(self, action: np.ndarray) -> np.ndarray:
        start = self._position
        end = start + STEP_SIZE * action
        inside_before = np.linalg.norm(start) <= ROOM_RADIUS
        inside_after = np.linalg.norm(end) <= ROOM_RADIUS
        if inside_before == inside_after:
            return end
        crossing = _first_crossing(start, end, ROOM_RADIUS)
        if crossing is None or self.in_door(crossing):
            return end
        pushed_radius = 0.99 if inside_before else 1.01
        return pushed_radius * end / np.linalg.norm(end)

    def _reward(self, position: np.ndarray) -> float:
        return 1.0 if np.linalg.norm(position) > ROOM_RADIUS else 0.0

    def _draw_task(self, canvas: Canvas) -> None:
        canvas.ring(ROOM_RADIUS, 0.03, (0, 0, 0))
        half = self.door_width / 2
        canvas.ring(ROOM_RADIUS, 0.05, (60, 200, 60), angle_range=(self.task - half, self.task + half))


class MetaEscapeRoom(MetaEpisodeEnv[float]):
    """``MetaEscapeRoom-v0``.

    :param num_sub_episodes: K (default 2).
    :param sub_episode_length: T (default 60).
    :param door_width: angular width of the door in radians (default pi/8).
    :param render_mode: ``"rgb_array"`` or None.
    """

    def __init__(
        self,
        num_sub_episodes: int = 2,
        sub_episode_length: int = 60,
        door_width: float = np.pi / 8,
        render_mode: str | None = None,
        **unknown: Any,
    ):
        name = type(self).__name__
        reject_unknown_kwargs(name, unknown, ["num_sub_episodes", "sub_episode_length", "door_width", "render_mode"])
        require(0 < door_width <= np.pi, name, "door_width", door_width, "must be in (0, pi]")
        sub_episode_length = require_int(name, "sub_episode_length", sub_episode_length)
        task_env = EscapeRoomTask(
            door_width=door_width,
            max_distance=ROOM_RADIUS + STEP_SIZE * sub_episode_length,
            render_mode=render_mode,
        )
        super().__init__(task_env, num_sub_episodes, sub_episode_length, render_mode=render_mode)
