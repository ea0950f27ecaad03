"""Scripted oracle policies that read the hidden task (``env.unwrapped.task``).

They are an upper reference for what a meta-RL agent can reach (an agent must
first *find* the task, the oracle already knows it) and a check that each
env's reward rules pay what they should. ``oracle_policy(env)`` returns a
function ``obs -> action`` for a made env of this package.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from sb3_mamba_envs.escape_room import ROOM_RADIUS, EscapeRoomTask
from sb3_mamba_envs.meta_episode import MetaEpisodeEnv
from sb3_mamba_envs.point_robot import STEP_SIZE, PointRobotTask
from sb3_mamba_envs.rooms import MOVES, RoomsTask

Policy = Callable[[np.ndarray], np.ndarray | int]


def _toward(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The action that moves a point robot onto ``target`` (or as far as one step goes)."""
    return np.clip((target - position) / STEP_SIZE, -1.0, 1.0).astype(np.float32)


def _point_robot_oracle(task_env: PointRobotTask) -> Policy:
    return lambda obs: _toward(np.asarray(obs[:2], dtype=np.float64), task_env.task)


def _escape_room_oracle(task_env: EscapeRoomTask) -> Policy:
    def act(obs: np.ndarray) -> np.ndarray:
        position = np.asarray(obs[:2], dtype=np.float64)
        door = np.array([np.cos(task_env.task), np.sin(task_env.task)])
        radius = np.linalg.norm(position)
        if radius > ROOM_RADIUS + 0.05:  # clearly outside (obs are float32): stay and collect
            return np.zeros(2, dtype=np.float32)
        if task_env.in_door(position) and radius > 0.85:
            return door.astype(np.float32)  # in front of the door: walk straight out
        return _toward(position, 0.9 * door)

    return act


def _rooms_oracle(task_env: RoomsTask) -> Policy:
    cells = task_env.cells

    def first_move(start: tuple[int, int], goal: tuple[int, int]) -> int:
        # breadth-first search over the (tiny) grid; returns the first action on a shortest path
        frontier = deque([(start, None)])
        seen = {start}
        while frontier:
            cell, first = frontier.popleft()
            if cell == goal:
                return first
            for action, (dx, dy) in enumerate(MOVES[:4]):
                nxt = (cell[0] + dx, cell[1] + dy)
                if nxt in cells and nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, action if first is None else first))
        raise RuntimeError(f"No path from {start} to {goal}.")

    def act(obs: np.ndarray) -> int:
        position = tuple(int(v) for v in task_env.position)
        goal = tuple(int(v) for v in task_env.task[task_env.next_goal])
        if position != goal:
            return first_move(position, goal)
        if task_env.action_space.n == 5:
            return 4  # stay
        return 0 if position[1] == 1 else 2  # a blocked move keeps the agent on the corner goal

    return act


def _reacher_oracle(task_env) -> Policy:
    import mujoco

    physics = task_env.physics
    model, data = physics.model.ptr, physics.data.ptr
    finger = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "finger")
    jacp = np.zeros((3, model.nv))

    def act(obs: np.ndarray) -> np.ndarray:
        # operational-space PD: torque = J^T (kp * error) - kd * qvel
        goal = task_env.dm_task.goals[task_env.dm_task.current_goal]
        mujoco.mj_jacGeom(model, data, jacp, None, finger)
        error = goal - data.geom_xpos[finger, :2]
        torque = jacp[:2].T @ (400.0 * error) - 0.3 * data.qvel  # gains tuned on Reacher-1
        return np.clip(torque, -1.0, 1.0).astype(np.float32)

    return act


def _panda_oracle(task_env) -> Policy:
    def act(obs: Any) -> np.ndarray:
        # end-effector displacement towards the goal (panda-gym moves 0.05 m per unit of action)
        return np.clip((task_env.task - task_env.ee_position) / 0.05, -1.0, 1.0).astype(np.float32)

    return act


def oracle_policy(env) -> Policy:
    """A scripted policy for ``env`` (a made env of this package) that knows the current task."""
    meta_env = env.unwrapped
    if not isinstance(meta_env, MetaEpisodeEnv):
        raise TypeError(f"{env} is not a meta-episode env of sb3_mamba_envs.")
    task_env = meta_env.task_env
    if isinstance(task_env, PointRobotTask):
        return _point_robot_oracle(task_env)
    if isinstance(task_env, EscapeRoomTask):
        return _escape_room_oracle(task_env)
    if isinstance(task_env, RoomsTask):
        return _rooms_oracle(task_env)
    if type(task_env).__name__ == "ReacherTask":  # avoid importing dm_control for the 2-D envs
        return _reacher_oracle(task_env)
    if type(task_env).__name__ == "PandaReachTask":
        return _panda_oracle(task_env)
    if type(task_env).__name__ == "HumanoidDirTask":
        raise NotImplementedError(
            "No scripted oracle walks a humanoid; tests check Humanoid-Dir's direction reward by moving the "
            "body along the task direction (tests/test_env_rules.py)."
        )
    raise TypeError(f"No oracle for {type(task_env).__name__}.")


def play_scripted(env, policy_name: str, episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Play ``episodes`` seeded meta-episodes with the ``"random"`` or ``"oracle"`` policy.

    Returns (meta-episode returns, per-sub-episode returns of shape
    (episodes, K), env steps per second of wall time).
    """
    if policy_name not in ("random", "oracle"):
        raise ValueError(f"policy_name must be 'random' or 'oracle', got {policy_name!r}.")
    returns, sub_returns, steps = [], [], 0
    start = time.perf_counter()
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        env.action_space.seed(seed + episode)
        policy = oracle_policy(env) if policy_name == "oracle" else (lambda _obs: env.action_space.sample())
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += reward
            steps += 1
            done = terminated or truncated
        returns.append(total)
        sub_returns.append(info["sub_episode_returns"])
    return np.array(returns), np.array(sub_returns), steps / (time.perf_counter() - start)
