"""Panda Reacher: a 7-DoF Franka Panda must find a hidden goal from camera images (paper Sec. 5).

Built on panda-gym 3 (PyBullet), as the reference's fork of it: the Panda arm
with a blocked gripper under end-effector control, on panda-gym's table, with
PyBullet's CPU renderer (no OpenGL/EGL needed). Chosen over MuJoCo Menagerie's
Panda because its pip package fetches the model from GitHub at run time (these
machines only reach package registries), while panda-gym ships in one wheel
with the URDF (through ``pybullet_data``) and matches the reference's physics.

* Task: a goal at radius 0.15 from the workspace centre, angle ~ U(-pi/2, pi/2),
  height 0.075; hidden (nothing marks it in the image).
* Reward: 1 while the end-effector is within 0.05 of the goal, else 0.
* Observation: a 64x64 RGB image of the arm; while the end-effector is at the
  goal, a green sphere appears there (the visual success cue).
* Action: end-effector displacement in [-1, 1]^3 (times 0.05 m, panda-gym's scale).
* Each sub-episode resets the arm to its neutral pose; K x T = 3 x 50.

Speed: the arm is drawn with the Panda's low-poly collision meshes (the visual
meshes cost 20x more in PyBullet's CPU renderer and a 64x64 image cannot show
their detail) and without shadows.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import tempfile
from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, reject_unknown_kwargs, require

GOAL_DISTANCE = 0.15
GOAL_HEIGHT = 0.075
GOAL_RADIUS = 0.05
CUE_COLOR = np.array([0.1, 0.9, 0.1, 1.0])
#: The agent's camera: looks at the workspace from the front-right, above the table.
CAMERA = {"target_position": np.array([0.0, 0.0, 0.05]), "distance": 0.75, "yaw": 60.0, "pitch": -40.0}


@contextlib.contextmanager
def _quiet_stdout():
    """PyBullet's C++ side prints its build time (stderr) and arguments (stdout): keep them out of the user's."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in saved:
            os.dup2(devnull, fd)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers what it printed: flush it into /dev/null
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _import_panda_gym():
    try:
        with _quiet_stdout():
            from panda_gym.envs.robots.panda import Panda
            from panda_gym.pybullet import PyBullet
    except ImportError as exc:
        raise ImportError(
            "MetaPandaReacher-v0 needs panda-gym and pybullet: pip install 'sb3-mamba[robotics]'"
        ) from exc
    return Panda, PyBullet


def _low_poly_urdf() -> str:
    """pybullet_data's Panda URDF with its collision meshes as visuals, written once to the temp folder."""
    import pybullet_data

    folder = os.path.join(pybullet_data.getDataPath(), "franka_panda")
    with open(os.path.join(folder, "panda.urdf")) as file:
        text = file.read()
    text = text.replace("package://meshes/visual/", "package://meshes/collision/")
    text = text.replace("package://meshes/", os.path.join(folder, "meshes") + "/")
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"sb3_mamba_panda_low_poly_{digest}.urdf")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=tempfile.gettempdir(), suffix=".urdf")
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)  # atomic: parallel envs may write it at once
    return path


class PandaReachTask(TaskEnv[np.ndarray]):
    """One sub-episode of Panda Reacher; ``task`` is the goal position ``(x, y, z)``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}
    reward_bounds = (0.0, 1.0)

    def __init__(self, image_size: int = 64, render_mode: str | None = None, render_size: int = 256):
        Panda, PyBullet = _import_panda_gym()
        self.image_size = image_size
        self.render_mode = render_mode
        self.render_size = render_size
        with _quiet_stdout():
            self.sim = PyBullet(render_mode="rgb_array", renderer="Tiny")
        low_poly = _low_poly_urdf()

        class LowPolyPanda(Panda):
            def _load_robot(self, file_name: str, base_position: np.ndarray) -> None:
                super()._load_robot(low_poly, base_position)

        self.robot = LowPolyPanda(
            self.sim, block_gripper=True, base_position=np.array([-0.6, 0.0, 0.0]), control_type="ee"
        )
        client = self.sim.physics_client
        self._view = client.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=CAMERA["target_position"],
            distance=CAMERA["distance"],
            yaw=CAMERA["yaw"],
            pitch=CAMERA["pitch"],
            roll=0.0,
            upAxisIndex=2,
        )
        self._projection = client.computeProjectionMatrixFOV(fov=60, aspect=1.0, nearVal=0.1, farVal=100.0)
        with self.sim.no_rendering():
            self.sim.create_plane(z_offset=-0.4)
            self.sim.create_table(length=1.1, width=0.7, height=0.4, x_offset=-0.3)
            # the success cue: a ghost sphere at the goal, transparent unless the arm is there
            self.sim.create_sphere(
                "cue", radius=GOAL_RADIUS, mass=0.0, ghost=True, position=np.zeros(3), rgba_color=np.zeros(4)
            )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.observation_space = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self._at_goal = False

    def sample_tasks(self, n: int) -> list[np.ndarray]:
        angle = self.np_random.uniform(-np.pi / 2, np.pi / 2, size=n)
        return [np.array([GOAL_DISTANCE * np.cos(a), GOAL_DISTANCE * np.sin(a), GOAL_HEIGHT]) for a in angle]

    def set_task(self, task: np.ndarray) -> None:
        goal = np.asarray(task, dtype=np.float64)
        if goal.shape != (3,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"A Panda Reacher task is a goal position (x, y, z), got {task!r}.")
        self._task = goal
        self.sim.set_base_pose("cue", goal, np.array([0.0, 0.0, 0.0, 1.0]))

    @property
    def ee_position(self) -> np.ndarray:
        return np.asarray(self.robot.get_ee_position(), dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task  # noqa: B018 - raises a clear error if no task was set
        self.robot.reset()
        self._update_cue()
        return self._image(), {}

    def step(self, action: np.ndarray):
        self.robot.set_action(np.asarray(action, dtype=np.float32))
        self.sim.step()
        self._update_cue()
        reward = 1.0 if self._at_goal else 0.0
        return (
            self._image(),
            reward,
            False,
            False,
            {"is_success": self._at_goal, "distance": float(np.linalg.norm(self.ee_position - self.task))},
        )

    def _update_cue(self) -> None:
        at_goal = bool(np.linalg.norm(self.ee_position - self.task) < GOAL_RADIUS)
        if at_goal != self._at_goal:
            self._show_cue(at_goal)
        self._at_goal = at_goal

    def _show_cue(self, visible: bool) -> None:
        color = CUE_COLOR if visible else np.zeros(4)
        self.sim.physics_client.changeVisualShape(self.sim._bodies_idx["cue"], -1, rgbaColor=color.tolist())

    def _image(self, size: int | None = None) -> np.ndarray:
        size = size or self.image_size
        client = self.sim.physics_client
        _, _, rgba, _, _ = client.getCameraImage(
            size,
            size,
            self._view,
            self._projection,
            shadow=False,
            renderer=client.ER_TINY_RENDERER,
            flags=client.ER_NO_SEGMENTATION_MASK,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()

    def render(self) -> np.ndarray | None:
        return self._image(self.render_size) if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.sim.close()

    _not_state = ("_view", "_projection")

    # snapshots: PyBullet's own world serialisation (positions, velocities, contact caches), as bytes
    def get_state(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "world.bullet")
            self.sim.physics_client.saveBullet(path)
            with open(path, "rb") as file:
                world = file.read()
        return {**super().get_state(), "bullet": world}

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        world = state.pop("bullet")
        super().set_state(state)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "world.bullet")
            with open(path, "wb") as file:
                file.write(world)
            self.sim.physics_client.restoreState(fileName=path)
        self.sim.set_base_pose("cue", self._task, np.array([0.0, 0.0, 0.0, 1.0]))
        self._show_cue(self._at_goal)


class MetaPandaReacher(MetaEpisodeEnv[np.ndarray]):
    """``MetaPandaReacher-v0``.

    :param num_sub_episodes: K (default 3).
    :param sub_episode_length: T (default 50).
    :param render_mode: ``"rgb_array"`` or None (a larger view from the agent's camera).
    """

    def __init__(
        self, num_sub_episodes: int = 3, sub_episode_length: int = 50, render_mode: str | None = None, **unknown: Any
    ):
        name = type(self).__name__
        reject_unknown_kwargs(name, unknown, ["num_sub_episodes", "sub_episode_length", "render_mode"])
        require(render_mode in (None, "rgb_array"), name, "render_mode", render_mode, "must be 'rgb_array' or None")
        super().__init__(
            PandaReachTask(render_mode=render_mode), num_sub_episodes, sub_episode_length, render_mode=render_mode
        )
