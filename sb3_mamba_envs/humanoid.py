"""Humanoid-Dir: walk in a hidden direction (paper Sec. 5, from MAML/VariBAD's ``HumanoidDir``).

Physics and observation are Gymnasium's MuJoCo ``Humanoid-v5`` (mujoco 3; the
reference needed mujoco-py 1.50), reached by composition: its reward is replaced
by the direction reward.

* Task: a walking direction ``theta ~ U(0, 2 pi)`` (radians), hidden.
* Reward: ``1.25 * v_com . (cos theta, sin theta)`` (the centre of mass's velocity
  along theta, Humanoid's forward weight, as the reference's ``0.25 / timestep``
  displacement term) ``+ 5`` while healthy ``- 0.1 |ctrl|^2 - min(5e-7 |cfrc_ext|^2, 10)``.
* A fall (torso height outside [1, 2]) ends the sub-episode early, so
  meta-episodes have variable length; K x T = 2 x 200.
* Actions: 17 torques in [-1, 1], scaled to Humanoid's range [-0.4, 0.4].
* Observation: Humanoid-v5's 348 state features (positions without the x/y of
  the torso, velocities, inertia, com velocities, actuator and contact forces),
  clipped to +-1e4 (contact forces reach ~4e3 in falls): finite bounds keep the
  env checkers quiet. The observed previous reward is clipped to [-50, 50].
"""

from __future__ import annotations

import os
from typing import Any

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering (see reacher.py)

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, reject_unknown_kwargs, require

FORWARD_WEIGHT = 1.25
OBSERVATION_BOUND = 1e4
_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: exact snapshots


class HumanoidDirTask(TaskEnv[float]):
    """One sub-episode of Humanoid-Dir; ``task`` is the walking direction in radians."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 67}
    reward_bounds = (-50.0, 50.0)

    def __init__(self, render_mode: str | None = None, render_size: int = 256):
        self._humanoid = HumanoidEnv(render_mode=render_mode, width=render_size, height=render_size)
        self._torque_scale = float(self._humanoid.action_space.high[0])  # 0.4
        self.action_space = spaces.Box(-1.0, 1.0, shape=self._humanoid.action_space.shape, dtype=np.float32)
        self.observation_space = spaces.Box(
            -OBSERVATION_BOUND, OBSERVATION_BOUND, shape=self._humanoid.observation_space.shape, dtype=np.float32
        )
        self.render_mode = render_mode

    _not_state = ("_humanoid", "_torque_scale")

    def sample_tasks(self, n: int) -> list[float]:
        return [float(a) for a in self.np_random.uniform(0.0, 2 * np.pi, size=n)]

    def set_task(self, task: float) -> None:
        theta = np.asarray(task, dtype=np.float64)
        if theta.size != 1 or not np.isfinite(theta).all():
            raise ValueError(f"A Humanoid-Dir task is a walking direction in radians (one float), got {task!r}.")
        self._task = float(theta.reshape(()))

    @property
    def direction(self) -> np.ndarray:
        return np.array([np.cos(self.task), np.sin(self.task)])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task  # noqa: B018 - raises a clear error if no task was set
        # Humanoid draws its initial noise from its own generator: seed it from ours (one stream)
        obs, _ = self._humanoid.reset(seed=int(self.np_random.integers(2**31 - 1)))
        return self._observation(obs), {}

    @staticmethod
    def _observation(obs: np.ndarray) -> np.ndarray:
        return np.clip(obs, -OBSERVATION_BOUND, OBSERVATION_BOUND).astype(np.float32)

    def step(self, action: np.ndarray):
        obs, _, terminated, truncated, info = self._humanoid.step(np.asarray(action, np.float64) * self._torque_scale)
        velocity = np.array([info["x_velocity"], info["y_velocity"]])
        direction_reward = FORWARD_WEIGHT * float(velocity @ self.direction)
        reward = direction_reward + info["reward_survive"] + info["reward_ctrl"] + info["reward_contact"]
        info = {"reward_direction": direction_reward, "com_velocity": velocity, "torso_height": self.torso_height}
        return self._observation(obs), float(reward), bool(terminated), bool(truncated), info

    @property
    def torso_height(self) -> float:
        return float(self._humanoid.data.qpos[2])

    def render(self) -> np.ndarray | None:
        return self._humanoid.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self._humanoid.close()

    # snapshots: the full MuJoCo integration state
    def get_state(self) -> dict[str, Any]:
        model, data = self._humanoid.model, self._humanoid.data
        physics = np.empty(mujoco.mj_stateSize(model, _STATE))
        mujoco.mj_getState(model, data, physics, _STATE)
        # Humanoid reads the centre of mass before stepping from data.xipos, which mj_step leaves at the
        # previous positions: keep it too, or the first reward after a restore differs in the 5th digit
        return {**super().get_state(), "physics": physics, "xipos": data.xipos.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        physics, xipos = state.pop("physics"), state.pop("xipos")
        super().set_state(state)
        mujoco.mj_setState(self._humanoid.model, self._humanoid.data, physics, _STATE)
        mujoco.mj_forward(self._humanoid.model, self._humanoid.data)
        self._humanoid.data.xipos[:] = xipos


class MetaHumanoidDir(MetaEpisodeEnv[float]):
    """``MetaHumanoidDir-v0``.

    :param num_sub_episodes: K (default 2).
    :param sub_episode_length: T (default 200); a fall ends a sub-episode earlier.
    :param render_mode: ``"rgb_array"`` or None (MuJoCo rendering: ``MUJOCO_GL=egl`` or ``osmesa``).
    """

    def __init__(
        self, num_sub_episodes: int = 2, sub_episode_length: int = 200, render_mode: str | None = None, **unknown: Any
    ):
        name = type(self).__name__
        reject_unknown_kwargs(name, unknown, ["num_sub_episodes", "sub_episode_length", "render_mode"])
        require(render_mode in (None, "rgb_array"), name, "render_mode", render_mode, "must be 'rgb_array' or None")
        super().__init__(
            HumanoidDirTask(render_mode=render_mode), num_sub_episodes, sub_episode_length, render_mode=render_mode
        )
