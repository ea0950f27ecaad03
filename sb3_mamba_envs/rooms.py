"""Rooms-N: N rooms in a row, one hidden goal per room, reached in order (paper App. C).

Layout (reference implementation): room i (0-based) is the 3x3 block
``x in [6i, 6i+2], y in {-1, 0, 1}``; rooms are joined by 1x3 corridors at
the middle row, ``x in {6i+3, 6i+4, 6i+5}, y = 0``. Width 6N - 3, height 3.
Every sub-episode starts at ``(0, 0)``. The goal of room i is one of its four
corners ``(6i or 6i+2, +-1)``: 4^N tasks.

Reward per step: +1 on goal i if goals 1..i-1 were reached in this
sub-episode; goals 1..N-1 pay once per sub-episode, goal N pays on every step
spent on it; -0.1 on every other step. K x T = 2 x 100.

Observation ``(x, y)`` scaled to [-1, 1] over the width and height. Actions:
0 up, 1 right, 2 down, 3 left (a blocked move stays in place), plus 4 = stay
when ``stay_action=True`` (the reference code's 5th action). Frames are drawn
with minigrid's grid objects and tile renderer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from minigrid.core.grid import Grid
from minigrid.core.world_object import Floor, Goal, Wall

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, reject_unknown_kwargs, require_int

ROOM_SIZE = 3
ROOM_PITCH = 6  # x distance between the left columns of consecutive rooms
#: (dx, dy) of actions 0..4: up, right, down, left, stay
MOVES = np.array([[0, 1], [1, 0], [0, -1], [-1, 0], [0, 0]])
#: minigrid's agent_dir (0 right, 1 down, 2 left, 3 up) for each move, for rendering
_AGENT_DIR = (3, 0, 1, 2, 0)
_TRAIL_COLORS = ("red", "green", "blue", "purple", "yellow")
#: pixels per grid cell in rgb_array frames: the grid is 5 cells high (3 + a wall on each side), so
#: frames are 260 px high (and 52 * (6N - 1) wide), even sizes as video encoders want
TILE_SIZE = 52


class RoomsTask(TaskEnv[np.ndarray]):
    """One sub-episode of Rooms-N; ``task`` is an ``(N, 2)`` int array of goal cells (one per room)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    reward_bounds = (-0.1, 1.0)

    def __init__(
        self, num_rooms: int = 3, stay_action: bool = False, render_mode: str | None = None, tile_size: int = TILE_SIZE
    ):
        self.num_rooms = num_rooms
        self.width = ROOM_PITCH * num_rooms - ROOM_PITCH + ROOM_SIZE
        self.height = ROOM_SIZE
        self.start = np.array([0, 0])
        self.cells = frozenset(
            [(ROOM_PITCH * i + dx, y) for i in range(num_rooms) for dx in range(ROOM_SIZE) for y in (-1, 0, 1)]
            + [(ROOM_PITCH * i + dx, 0) for i in range(num_rooms - 1) for dx in (3, 4, 5)]
        )
        #: the four candidate goal cells of every room, shape (N, 4, 2)
        self.goal_candidates = np.array(
            [[(ROOM_PITCH * i + dx, dy) for dx in (0, 2) for dy in (1, -1)] for i in range(num_rooms)]
        )
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(5 if stay_action else 4)
        self.render_mode = render_mode
        self.tile_size = tile_size
        self._position = self.start.copy()
        self._next_goal = 0
        self._heading = 1
        self._trails: list[set[tuple[int, int]]] = []

    # -- task hook ---------------------------------------------------------------
    def sample_tasks(self, n: int) -> list[np.ndarray]:
        corners = self.np_random.integers(0, 4, size=(n, self.num_rooms))
        rooms = np.arange(self.num_rooms)
        return [self.goal_candidates[rooms, c] for c in corners]

    def set_task(self, task: np.ndarray) -> None:
        goals = np.asarray(task)
        if goals.shape != (self.num_rooms, 2) or not all(
            any((g == c).all() for c in candidates) for g, candidates in zip(goals, self.goal_candidates, strict=True)
        ):
            raise ValueError(
                f"A Rooms-{self.num_rooms} task is an ({self.num_rooms}, 2) array with one corner cell of "
                f"each room (see goal_candidates), got {task!r}."
            )
        self._task = goals.astype(np.int64)
        self._trails = []

    @property
    def position(self) -> np.ndarray:
        """The agent's cell ``(x, y)``."""
        return self._position.copy()

    @property
    def next_goal(self) -> int:
        """Index of the goal that pays next in this sub-episode (N-1 once the last goal is reachable)."""
        return self._next_goal

    # -- dynamics ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task  # noqa: B018 - raises a clear error if no task was set
        self._position = self.start.copy()
        self._next_goal = 0
        self._heading = 1
        self._trails.append({tuple(self._position)})
        return self._observation(), {}

    def step(self, action: int):
        target = self._position + MOVES[action]
        if tuple(target) in self.cells:
            self._position = target
        self._heading = int(action)
        self._trails[-1].add(tuple(self._position))

        reward = -0.1
        if (self._position == self.task[self._next_goal]).all():
            reward = 1.0
            if self._next_goal < self.num_rooms - 1:
                self._next_goal += 1  # intermediate goals pay once per sub-episode
        return self._observation(), reward, False, False, {"goals_reached": self._goals_reached()}

    def _goals_reached(self) -> int:
        on_last = self._next_goal == self.num_rooms - 1 and (self._position == self.task[-1]).all()
        return self._next_goal + int(on_last)

    def _observation(self) -> np.ndarray:
        x = 2.0 * self._position[0] / (self.width - 1) - 1.0 if self.width > 1 else 0.0
        y = 2.0 * (self._position[1] + 1) / (self.height - 1) - 1.0
        return np.array([x, y], dtype=np.float32)

    # -- rendering (minigrid objects and tile renderer) ----------------------------
    def _grid_index(self, cell: tuple[int, int]) -> tuple[int, int]:
        # one wall tile of border; minigrid rows grow downwards, our y grows upwards
        return cell[0] + 1, 2 - cell[1]

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        grid = Grid(self.width + 2, self.height + 2)
        for i in range(grid.width):
            for j in range(grid.height):
                grid.set(i, j, Wall())
        for cell in self.cells:
            grid.set(*self._grid_index(cell), None)
        for k, trail in enumerate(self._trails):
            for cell in trail:
                grid.set(*self._grid_index(cell), Floor(_TRAIL_COLORS[k % len(_TRAIL_COLORS)]))
        for i, goal in enumerate(self.task):
            collected = i < self._next_goal
            grid.set(*self._grid_index(tuple(goal)), Goal("yellow" if collected else "green"))
        return grid.render(
            self.tile_size,
            agent_pos=self._grid_index(tuple(self._position)),
            agent_dir=_AGENT_DIR[self._heading],
        )


class MetaRooms(MetaEpisodeEnv[np.ndarray]):
    """``MetaRooms-N-v0`` for N = 1..8.

    :param num_rooms: N, the number of rooms and goals (default 3).
    :param num_sub_episodes: K (default 2).
    :param sub_episode_length: T (default 100).
    :param stay_action: add a 5th "stay" action (the reference code has it, the paper does not; default False).
    :param render_mode: ``"rgb_array"`` or None.
    """

    def __init__(
        self,
        num_rooms: int = 3,
        num_sub_episodes: int = 2,
        sub_episode_length: int = 100,
        stay_action: bool = False,
        render_mode: str | None = None,
        **unknown: Any,
    ):
        name = type(self).__name__
        reject_unknown_kwargs(
            name, unknown, ["num_rooms", "num_sub_episodes", "sub_episode_length", "stay_action", "render_mode"]
        )
        num_rooms = require_int(name, "num_rooms", num_rooms)
        task_env = RoomsTask(num_rooms=num_rooms, stay_action=bool(stay_action), render_mode=render_mode)
        super().__init__(task_env, num_sub_episodes, sub_episode_length, render_mode=render_mode)
