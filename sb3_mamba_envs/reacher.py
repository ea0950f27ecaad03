"""Reacher-N: dm_control's two-link reacher must find N hidden goals in order (paper App. C).

Built on dm_control's stock ``reacher`` physics (planar two-link arm, 0.02 s
per action) as a custom dm_control task (:class:`MultiGoalReacher`), made a
Gymnasium env through Shimmy's ``DmControlCompatibilityV0``.

* Task: N goals i.i.d. uniform in the disc of radius 0.195 around the arm's
  base (reference: ``r = 0.195 * sqrt(u)``), goal radius 0.05.
* Reward: the current goal pays ``max(1 - d / 0.05, 0)`` (d = fingertip to
  goal); goals 1..N-1 pay on the step the fingertip first enters them, then
  the next goal becomes current; goal N pays on every step inside it. Minus a
  control cost ``0.01 * |a|^2`` (the reference's contact cost is zero for
  this planar arm, which has no contacts, and is left out).
* Every sub-episode resets the arm to a random joint configuration and the
  current goal to goal 1.
* Observation: joint velocities (2) and fingertip (x, y) (2); the goal is not
  observed. K x T = 3 x 300 for N <= 2 and 3 x 400 for N >= 3.
* ``MetaReacherPixels-v0`` (``pixels=True``): Reacher-1 seen as a 64x64 RGB image
  from dm_control's fixed top camera, rendered by MuJoCo with the goal marker
  hidden; K x T = 2 x 300. The agent's frames skip shadows, reflections, the
  skybox and multisampling: 8x faster in software OpenGL (1.8 vs 15 ms a frame),
  and nothing the agent needs.
"""

from __future__ import annotations

import collections
import os
from typing import Any

if not os.environ.get("DISPLAY"):
    # Headless machines: MuJoCo must be told to render through EGL before
    # dm_control is imported (override with MUJOCO_GL=osmesa if EGL is missing).
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
from dm_control.rl import control
from dm_control.suite import base, reacher
from dm_control.suite.utils import randomizers
from gymnasium import spaces
from shimmy import DmControlCompatibilityV0

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, reject_unknown_kwargs, require, require_int
from sb3_mamba_envs.rendering import sub_episode_color

GOAL_RADIUS = 0.05
GOAL_DISC_RADIUS = 0.195  # 3 * 0.065, the reference's goal sampler
CONTROL_COST = 0.01
# Observation bounds. The fingertip is at most 0.24 from the base (arm length).
# Joint speeds stay below ~7 rad/s under bang-bang torques (gear 0.05, damped
# joints); 50 is a safe bound, checked by the random-action tests.
FINGERTIP_BOUND = 0.3
VELOCITY_BOUND = 50.0


class MultiGoalReacher(reacher.Reacher):
    """dm_control task: reach ``goals`` in order; see the module docstring for the reward."""

    def __init__(self, goal_radius: float = GOAL_RADIUS, control_cost: float = CONTROL_COST, random=None):
        super().__init__(target_size=goal_radius, random=random)
        self.goal_radius = goal_radius
        self.control_cost = control_cost
        self.goals = np.zeros((1, 2))
        self.current_goal = 0

    def initialize_episode(self, physics) -> None:
        physics.named.model.geom_size["target", 0] = self.goal_radius
        randomizers.randomize_limited_and_rotational_joints(physics, self.random)
        self.current_goal = 0
        self._show_current_goal(physics)
        # skip Reacher.initialize_episode, which would draw its own random target
        base.Task.initialize_episode(self, physics)

    def _show_current_goal(self, physics) -> None:
        # the target geom has no collision: moving it only changes what is rendered
        physics.named.model.geom_pos["target", "x"] = self.goals[self.current_goal, 0]
        physics.named.model.geom_pos["target", "y"] = self.goals[self.current_goal, 1]

    def get_observation(self, physics):
        obs = collections.OrderedDict()
        obs["velocity"] = physics.velocity()
        obs["fingertip"] = physics.named.data.geom_xpos["finger", :2].copy()
        return obs

    def get_reward(self, physics) -> float:
        # dm_control calls this once after every step (never at reset), so the
        # goal progression lives here, as in the reference implementation.
        fingertip = physics.named.data.geom_xpos["finger", :2]
        distance = float(np.linalg.norm(fingertip - self.goals[self.current_goal]))
        reward = max(1.0 - distance / self.goal_radius, 0.0)
        if distance < self.goal_radius and self.current_goal < len(self.goals) - 1:
            self.current_goal += 1
            self._show_current_goal(physics)
        return reward - self.control_cost * float(np.square(physics.data.ctrl).sum())


def _plain_scene(physics, scene) -> None:
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
        scene.flags[flag] = 0


class ReacherTask(TaskEnv[np.ndarray]):
    """One sub-episode of Reacher-N; ``task`` is an ``(N, 2)`` array of goal positions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        num_goals: int = 1,
        render_mode: str | None = None,
        render_size: int = 256,
        pixels: bool = False,
        image_size: int = 64,
    ):
        self.num_goals = num_goals
        self.pixels = pixels
        self.image_size = image_size
        physics = reacher.Physics.from_xml_string(*reacher.get_model_and_assets())
        self.dm_task = MultiGoalReacher()
        self.dm_task.goals = np.zeros((num_goals, 2))
        self._dm_env = DmControlCompatibilityV0(
            control.Environment(physics, self.dm_task, time_limit=float("inf")),
            render_mode=render_mode,
            render_kwargs={"height": render_size, "width": render_size, "camera_id": 0},
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        if pixels:
            self.observation_space = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            physics.model.vis.quality.offsamples = 0  # no multisampling (read when the context is made)
        else:
            bound = np.array([VELOCITY_BOUND] * 2 + [FINGERTIP_BOUND] * 2, dtype=np.float32)
            self.observation_space = spaces.Box(-bound, bound, dtype=np.float32)
        self.reward_bounds = (-CONTROL_COST * 2.0, 1.0)  # |a|^2 <= 2
        self.render_mode = render_mode
        self.render_size = render_size
        self._trails: list[list[np.ndarray]] = []  # fingertip (x, y, z) per step, one list per sub-episode
        self._camera_matrix: np.ndarray | None = None

    _not_state = ("_dm_env", "_camera_matrix")

    @property
    def physics(self):
        return self._dm_env._env.physics

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "physics": self.physics.get_state().copy(),
            "current_goal": self.dm_task.current_goal,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        physics_state, current_goal = state.pop("physics"), state.pop("current_goal")
        super().set_state(state)
        self.dm_task.goals = self._task
        self.dm_task.current_goal = current_goal
        with self.physics.reset_context():  # recomputes positions derived from qpos
            self.physics.set_state(physics_state)
        self.dm_task._show_current_goal(self.physics)

    def sample_tasks(self, n: int) -> list[np.ndarray]:
        angle = self.np_random.uniform(0.0, 2 * np.pi, size=(n, self.num_goals))
        radius = GOAL_DISC_RADIUS * np.sqrt(self.np_random.uniform(0.0, 1.0, size=(n, self.num_goals)))
        goals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
        return list(goals)

    def set_task(self, task: np.ndarray) -> None:
        goals = np.asarray(task, dtype=np.float64)
        if goals.shape != (self.num_goals, 2) or not np.all(np.isfinite(goals)):
            raise ValueError(f"A Reacher-{self.num_goals} task is an ({self.num_goals}, 2) goal array, got {task!r}.")
        self._task = goals
        self.dm_task.goals = goals
        self._trails = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task  # noqa: B018 - raises a clear error if no task was set
        # dm_control's task draws the arm's initial joints from its own RandomState;
        # seed it from our generator so one seeded stream drives everything.
        obs, _ = self._dm_env.reset(seed=int(self.np_random.integers(2**31 - 1)))
        if self.render_mode is not None:
            self._trails.append([self._fingertip()])
        return self._observation(obs), {}

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, _ = self._dm_env.step(np.asarray(action, dtype=np.float64))
        info = {"current_goal": self.dm_task.current_goal}
        if self.render_mode is not None:
            self._trails[-1].append(self._fingertip())
        return self._observation(obs), float(reward), bool(terminated), bool(truncated), info

    def _observation(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.pixels:
            return np.concatenate([obs["velocity"], obs["fingertip"]]).astype(np.float32)
        # the agent's camera image, with the goal marker hidden (it must search for the goal)
        rgba = self.physics.named.model.geom_rgba["target"]
        alpha, rgba[3] = rgba[3], 0.0
        try:
            return self.physics.render(self.image_size, self.image_size, camera_id=0, scene_callback=_plain_scene)
        finally:
            rgba[3] = alpha

    def _fingertip(self) -> np.ndarray:
        return self.physics.named.data.geom_xpos["finger"].copy()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        frame = self._dm_env.render().copy()
        if self._camera_matrix is None:
            # camera 0 of the reacher is fixed: its projection never changes
            from dm_control.mujoco.engine import Camera

            self._camera_matrix = Camera(self.physics, self.render_size, self.render_size, 0).matrix
        for k, trail in enumerate(self._trails):
            points = np.c_[np.asarray(trail), np.ones(len(trail))] @ self._camera_matrix.T  # (n, 3)
            cols, rows = (points[:, :2] / points[:, 2:]).round().astype(int).T
            keep = (rows >= 1) & (rows < self.render_size - 1) & (cols >= 1) & (cols < self.render_size - 1)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    frame[rows[keep] + dr, cols[keep] + dc] = sub_episode_color(k)
        return frame

    def close(self) -> None:
        self._dm_env.close()


class MetaReacher(MetaEpisodeEnv[np.ndarray]):
    """``MetaReacher-N-v0`` for N = 1..4, and ``MetaReacherPixels-v0``.

    :param num_goals: N, goals to reach in order (default 1).
    :param num_sub_episodes: K (default 3; 2 for ``MetaReacherPixels-v0``).
    :param sub_episode_length: T (default None: 300 for N <= 2, 400 for N >= 3, as in the paper).
    :param render_mode: ``"rgb_array"`` or None (needs MuJoCo rendering: ``MUJOCO_GL=egl`` or ``osmesa``).
    :param pixels: observe a 64x64 RGB image (goal hidden) instead of the state; the observation
        is then a ``Dict`` of ``"image"`` (uint8) and ``"reward_time"``. Needs MuJoCo rendering.
    """

    def __init__(
        self,
        num_goals: int = 1,
        num_sub_episodes: int = 3,
        sub_episode_length: int | None = None,
        render_mode: str | None = None,
        pixels: bool = False,
        **unknown: Any,
    ):
        name = type(self).__name__
        reject_unknown_kwargs(
            name, unknown, ["num_goals", "num_sub_episodes", "sub_episode_length", "render_mode", "pixels"]
        )
        num_goals = require_int(name, "num_goals", num_goals)
        if sub_episode_length is None:
            sub_episode_length = 300 if num_goals <= 2 else 400
        require(render_mode in (None, "rgb_array"), name, "render_mode", render_mode, "must be 'rgb_array' or None")
        task_env = ReacherTask(num_goals=num_goals, render_mode=render_mode, pixels=bool(pixels))
        super().__init__(task_env, num_sub_episodes, sub_episode_length, render_mode=render_mode)
