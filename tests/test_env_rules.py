"""The reward rules and meta-episode bookkeeping of each env, checked exactly where they are exact."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from sb3_mamba_envs.meta_episode import IMAGE_KEY, REWARD_TIME_KEY, MetaEpisodeEnv, TaskEnv
from sb3_mamba_envs.oracles import oracle_policy
from tests.rendering import SKIP_REASON as RENDER_SKIP_REASON
from tests.rendering import can_render


def play(env: gym.Env, policy, seed: int) -> tuple[float, list[float], list[dict]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    total, infos, done = 0.0, [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += reward
        infos.append(info)
        done = terminated or truncated
    return total, infos[-1]["sub_episode_returns"], infos


def mean_returns(env_id: str, episodes: int, **kwargs) -> tuple[float, float]:
    env = gym.make(env_id, **kwargs)
    oracle = np.mean([play(env, oracle_policy(env), seed)[0] for seed in range(episodes)])
    random = np.mean([play(env, lambda obs: env.action_space.sample(), seed)[0] for seed in range(episodes)])
    env.close()
    return float(oracle), float(random)


# -- bookkeeping ----------------------------------------------------------------


def test_bookkeeping_is_exact_rooms():
    K, T = 3, 7
    env = gym.make("MetaRooms-2-v0", num_sub_episodes=K, sub_episode_length=T)
    obs, info = env.reset(seed=0)
    start = obs.copy()
    np.testing.assert_array_equal(start, [-1.0, 0.0, 0.0, 0.0])  # cell (0, 0), r_prev 0, t/H 0
    assert info["sub_episode"] == 0
    rng = np.random.default_rng(0)
    total = 0.0
    returns = np.zeros(K)
    for t in range(1, K * T + 1):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
        total += reward
        k = (t - 1) // T
        returns[k] += reward
        assert obs[-1] == pytest.approx(t / (K * T))  # time since the meta-episode began, not reset
        assert obs[-2] == pytest.approx(reward)  # previous reward in the observation
        assert info["sub_episode"] == k
        assert info["sub_episode_end"] == (t % T == 0)
        if t % T == 0 and t < K * T:
            np.testing.assert_array_equal(obs[:2], start[:2])  # first obs of the next sub-episode
        assert not terminated
        assert truncated == (t == K * T)
    np.testing.assert_allclose(info["sub_episode_returns"], returns)
    assert info["sub_episode_lengths"] == [T] * K
    assert sum(info["sub_episode_returns"]) == pytest.approx(total)


class _FallingTask(TaskEnv[int]):
    """A toy task env that terminates after ``task`` steps (a fall), to test early sub-episode ends."""

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._steps = 0

    def sample_tasks(self, n: int) -> list[int]:
        return [int(x) for x in self.np_random.integers(2, 5, size=n)]

    def set_task(self, task: int) -> None:
        self._task = int(task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._steps = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any):
        self._steps += 1
        fell = self._steps >= self.task
        return np.array([self._steps], np.float32), 1.0, fell, False, {}


def test_early_sub_episode_end_gives_variable_length_and_terminal_last():
    env = MetaEpisodeEnv(_FallingTask(), num_sub_episodes=3, sub_episode_length=10)
    env.reset(seed=0, options={"task": 3})
    steps, done = 0, False
    while not done:
        obs, _, terminated, truncated, info = env.step(0)
        steps += 1
        done = terminated or truncated
    assert steps == 9  # 3 sub-episodes of 3 steps, not 3 x 10
    assert terminated and not truncated  # the last sub-episode ended in a real terminal state
    assert info["sub_episode_lengths"] == [3, 3, 3]
    assert obs[-1] == pytest.approx(9 / 30)  # t / H with H = K * T


def test_wrapper_accepts_image_task_envs():
    class _ImageTask(_FallingTask):
        def __init__(self):
            super().__init__()
            self.observation_space = spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((8, 8, 3), np.uint8), {}

        def step(self, action):
            _, r, term, trunc, info = super().step(action)
            return np.full((8, 8, 3), 7, np.uint8), r, term, trunc, info

    env = MetaEpisodeEnv(_ImageTask(), num_sub_episodes=2, sub_episode_length=5)
    assert isinstance(env.observation_space, spaces.Dict)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    obs, *_ = env.step(1)
    assert obs[IMAGE_KEY].dtype == np.uint8 and obs[IMAGE_KEY][0, 0, 0] == 7
    np.testing.assert_allclose(obs[REWARD_TIME_KEY], [1.0, 0.1])


def test_wrapper_rejects_envs_without_task_hook():
    with pytest.raises(TypeError, match="sample_tasks"):
        MetaEpisodeEnv(gym.make("CartPole-v1").unwrapped, num_sub_episodes=2, sub_episode_length=5)


# -- Rooms-N --------------------------------------------------------------------


def rooms_path_length(goals: np.ndarray) -> int:
    """Shortest path from (0, 0) through the goals in order: rooms are joined at y = 0."""
    length, (x, y) = 0, (0, 0)
    for gx, gy in goals:
        same_room = abs(gx - x) <= 2
        length += abs(gx - x) + (abs(gy - y) if same_room else abs(y) + abs(gy))
        x, y = gx, gy
    return length


@pytest.mark.parametrize("num_rooms", range(1, 9))
def test_rooms_oracle_return_matches_reward_rules(num_rooms):
    """Both sub-episodes go straight to the goals: N goals pay 1, the last one every step after."""
    env = gym.make(f"MetaRooms-{num_rooms}-v0")
    T = 100
    for seed in range(5):
        _total, sub_returns, _ = play(env, oracle_policy(env), seed)
        path = rooms_path_length(env.unwrapped.task)
        expected = num_rooms + (T - path) - 0.1 * (path - num_rooms)
        np.testing.assert_allclose(sub_returns, [expected, expected], atol=1e-9)
    random = np.mean([play(env, lambda o: env.action_space.sample(), s)[0] for s in range(10)])
    assert random < 0.5 * 2 * expected


def test_rooms_goal_order_and_pay_once():
    env = gym.make("MetaRooms-2-v0")
    # goal 1 at (2, 1), goal 2 at (6, -1)
    env.reset(seed=0, options={"task": np.array([[2, 1], [6, -1]])})
    up, right, down, left = 0, 1, 2, 3

    def walk(*actions):
        return [env.step(a)[1] for a in actions]

    # goal 2 first: not reachable before goal 1, pays nothing
    assert walk(right, right, right, right, right, right, down) == [-0.1] * 7  # on (6, -1)
    assert walk(up, left, left, left, left) == [-0.1] * 5  # on (2, 0)
    assert walk(up) == [1.0]  # goal 1 at (2, 1)
    assert walk(down, up) == [-0.1, -0.1]  # intermediate goals pay once per sub-episode
    assert walk(down, right, right, right, right) == [-0.1] * 5  # on (6, 0)
    assert walk(down) == [1.0]  # goal 2 at (6, -1)
    # the last goal pays on every step spent on it (blocked moves keep the agent there)
    assert walk(down, left, up, down) == [1.0, 1.0, -0.1, 1.0]


def test_rooms_observation_scaling():
    env = gym.make("MetaRooms-3-v0")  # width 15
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[:2], [-1.0, 0.0])
    for _ in range(20):
        obs, *_ = env.step(1)  # right, to the last column
    np.testing.assert_allclose(obs[:2], [1.0, 0.0])
    obs, *_ = env.step(0)
    np.testing.assert_allclose(obs[:2], [1.0, 1.0])


# -- point robot and escape room ------------------------------------------------------


def test_point_robot_reward_rule():
    env = gym.make("MetaPointRobot-v0")
    env.reset(seed=0, options={"task": np.array([0.0, 0.95])})
    rewards = [env.step(np.array([0.0, 1.0], np.float32))[1] for _ in range(13)]
    # after k steps the agent is at (0, 0.1 k), at distance |0.95 - 0.1 k| from the goal
    expected = [0.0] * 7 + [0.85, 0.95, 0.95, 0.85] + [0.0] * 2
    np.testing.assert_allclose(rewards, expected, atol=1e-9)


def test_point_robot_oracle_vs_random():
    oracle, random = mean_returns("MetaPointRobot-v0", 10)
    # the oracle reaches the goal in <= 10 steps of every 100 and stays: > 3 x 90 x 0.9
    assert oracle > 250 and random < 20


def test_point_robot_wind_moves_differently_and_oracle_still_wins():
    calm, windy = gym.make("MetaPointRobot-v0"), gym.make("MetaPointRobotWind-v0")
    for env in (calm, windy):
        env.reset(seed=0, options={"task": np.array([1.0, 0.0])})
    a = np.zeros(2, np.float32)
    calm_obs = [calm.step(a)[0][:2] for _ in range(5)]
    windy_obs = [windy.step(a)[0][:2] for _ in range(5)]
    np.testing.assert_array_equal(calm_obs[-1], [0.0, 0.0])
    assert np.abs(windy_obs[-1]).sum() > 0.0  # the wind pushed the idle robot
    oracle, random = mean_returns("MetaPointRobotWind-v0", 10)
    assert oracle > 240 and random < 20


def test_escape_room_wall_and_door():
    env = gym.make("MetaEscapeRoom-v0")
    env.reset(seed=0, options={"task": np.pi / 2})  # door centred straight up
    task_env = env.unwrapped.task_env
    task_env._position = np.array([0.5, 0.0])
    obs, reward, *_ = env.step(np.array([1.0, 0.0], np.float32))  # to (0.6, 0)
    for _ in range(5):
        obs, reward, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert np.linalg.norm(obs[:2]) == pytest.approx(0.99, abs=1e-6) and reward == 0.0  # pushed back
    task_env._position = np.array([0.0, 0.95])
    obs, reward, *_ = env.step(np.array([0.0, 1.0], np.float32))  # through the door
    assert obs[1] == pytest.approx(1.05) and reward == 1.0
    task_env._position = np.array([0.5, 0.9])  # outside, beside the door
    obs, reward, *_ = env.step(np.array([-1.0, -1.0], np.float32))
    assert np.linalg.norm(obs[:2]) == pytest.approx(1.01, abs=1e-6) and reward == 1.0  # wall blocks re-entry


def test_escape_room_oracle_vs_random():
    oracle, random = mean_returns("MetaEscapeRoom-v0", 20)
    # start within 2 of the door: out after <= ~25 steps of 60, in both sub-episodes
    assert oracle > 80 and random < 5


# -- Reacher-N ------------------------------------------------------------------


def _fingertip_at_joints(task_env, qpos) -> np.ndarray:
    physics = task_env.physics
    physics.data.qpos[:] = qpos
    physics.data.qvel[:] = 0.0
    physics.data.ctrl[:] = 0.0
    physics.forward()
    return physics.named.data.geom_xpos["finger", :2].copy()


def test_reacher_goal_rules():
    env = gym.make("MetaReacher-2-v0")
    env.reset(seed=0)
    task_env = env.unwrapped.task_env
    tip = _fingertip_at_joints(task_env, [0.3, 0.4])
    far = -tip
    task_env.set_task(np.stack([tip, far]))
    dm_task, physics = task_env.dm_task, task_env.physics
    dm_task.current_goal = 0
    assert dm_task.get_reward(physics) == pytest.approx(1.0)  # at the centre of goal 1
    assert dm_task.current_goal == 1  # goal 1 pays once, then goal 2 is current
    assert dm_task.get_reward(physics) == pytest.approx(0.0)
    # partial reward inside the radius, and goal 2 (the last) pays every step
    task_env.set_task(np.stack([far, tip + np.array([0.025, 0.0])]))
    dm_task.current_goal = 1
    assert dm_task.get_reward(physics) == pytest.approx(0.5)
    assert dm_task.get_reward(physics) == pytest.approx(0.5)
    physics.data.ctrl[:] = [1.0, -1.0]
    assert dm_task.get_reward(physics) == pytest.approx(0.5 - 0.01 * 2)  # control cost


def test_reacher_sub_episode_resets_arm_and_goal_progress():
    env = gym.make("MetaReacher-2-v0", sub_episode_length=5)
    env.reset(seed=0)
    task_env = env.unwrapped.task_env
    task_env.dm_task.current_goal = 1
    for _ in range(5):
        obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["sub_episode_end"] and task_env.dm_task.current_goal == 0
    np.testing.assert_array_equal(obs[:2], [0.0, 0.0])  # a fresh sub-episode starts at rest


@pytest.mark.parametrize("num_goals", [1, 2, 3, 4])
def test_reacher_oracle_vs_random(num_goals):
    oracle, random = mean_returns(f"MetaReacher-{num_goals}-v0", 3)
    assert oracle > 400 and random < 0.25 * oracle


# -- Reacher from pixels ------------------------------------------------------------
@pytest.mark.skipif(not can_render(), reason=RENDER_SKIP_REASON)
def test_reacher_pixels_hide_the_goal_and_follow_the_arm():
    env = gym.make("MetaReacherPixels-v0", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.horizon == 600 and obs[IMAGE_KEY].shape == (64, 64, 3) and obs[IMAGE_KEY].dtype == np.uint8
    task_env = env.unwrapped.task_env
    goal_a, goal_b = np.array([[0.15, 0.0]]), np.array([[-0.15, 0.05]])
    task_env.set_task(goal_a)
    task_env.dm_task._show_current_goal(task_env.physics)
    task_env.physics.forward()  # recompute the marker's position (a step would)
    image_a, frame_a = task_env._observation({}), env.render()
    task_env.set_task(goal_b)
    task_env.dm_task._show_current_goal(task_env.physics)
    task_env.physics.forward()
    image_b, frame_b = task_env._observation({}), env.render()
    np.testing.assert_array_equal(image_a, image_b)  # the agent never sees the goal...
    assert np.abs(frame_a.astype(int) - frame_b).sum() > 0  # ...but the human view shows it
    obs, _ = env.reset(seed=0)
    moved = obs
    for _ in range(10):
        moved, *_ = env.step(np.ones(2, np.float32))
    assert np.abs(moved[IMAGE_KEY].astype(int) - obs[IMAGE_KEY]).sum() > 0  # the arm moves in the image


@pytest.mark.skipif(not can_render(), reason=RENDER_SKIP_REASON)
def test_reacher_pixels_oracle_vs_random():
    oracle, random = mean_returns("MetaReacherPixels-v0", 2, sub_episode_length=100)
    assert oracle > 100 and random < 0.25 * oracle


# -- Humanoid-Dir ---------------------------------------------------------------------
def _push(env, speed: float, angle: float) -> dict:
    """One zero-torque step with the whole body set moving at ``speed`` along ``angle``."""
    humanoid = env.unwrapped.task_env._humanoid
    qpos, qvel = humanoid.data.qpos.copy(), np.zeros_like(humanoid.data.qvel)
    qvel[:2] = speed * np.array([np.cos(angle), np.sin(angle)])  # the free root joint's linear velocity
    humanoid.set_state(qpos, qvel)
    humanoid.data.xipos[:] = humanoid.data.xipos  # (set_state ran mj_forward: the "before" COM is current)
    _, reward, _, _, info = env.step(np.zeros(17, np.float32))
    return {"reward": reward, **info}


def test_humanoid_direction_reward_rule():
    env = gym.make("MetaHumanoidDir-v0")
    env.reset(seed=0, options={"task": 0.7})
    along = _push(env, 1.0, 0.7)
    env.reset(seed=0, options={"task": 0.7})
    against = _push(env, 1.0, 0.7 + np.pi)
    env.reset(seed=0, options={"task": 0.7})
    across = _push(env, 1.0, 0.7 + np.pi / 2)
    # the centre of mass moves with the body: 1.25 x its speed along the task direction
    assert along["reward_direction"] == pytest.approx(1.25, rel=0.1)
    assert against["reward_direction"] == pytest.approx(-1.25, rel=0.1)
    assert abs(across["reward_direction"]) < 0.15
    # alive bonus while upright, minus the (zero-torque: zero) control cost and the contact cost
    assert along["reward"] == pytest.approx(along["reward_direction"] + 5.0, abs=0.05)
    assert along["reward"] - against["reward"] == pytest.approx(2.5, rel=0.1)


def test_humanoid_direction_oracle_vs_random_and_falls_end_sub_episodes():
    env = gym.make("MetaHumanoidDir-v0")
    oracle, random = [], []
    for seed in range(3):
        env.reset(seed=seed)
        theta = env.unwrapped.task
        oracle.append(sum(_push(env, 1.0, theta)["reward_direction"] for _ in range(15)))
        env.reset(seed=seed)
        env.action_space.seed(seed)
        random.append(sum(env.step(env.action_space.sample())[4]["reward_direction"] for _ in range(15)))
    assert np.mean(oracle) > 15 and abs(np.mean(random)) < 0.3 * np.mean(oracle)
    # a random humanoid falls: its sub-episodes end early, the meta-episode is shorter than H
    _, _sub_returns, infos = play(env, lambda obs: env.action_space.sample(), seed=0)
    lengths = infos[-1]["sub_episode_lengths"]
    assert len(lengths) == 2 and all(0 < n < 200 for n in lengths) and len(infos) == sum(lengths)
    assert infos[-1]["torso_height"] < 1.0 or infos[-1]["torso_height"] > 2.0


# -- Panda Reacher ------------------------------------------------------------------------
def test_panda_sparse_reward_and_success_cue():
    env = gym.make("MetaPandaReacher-v0")
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.horizon == 150 and obs[IMAGE_KEY].shape == (64, 64, 3)
    green = lambda image: int(((image[..., 1] > 150) & (image[..., 0] < 100)).sum())  # noqa: E731
    assert green(obs[IMAGE_KEY]) == 0  # the goal is hidden
    policy = oracle_policy(env)
    for _ in range(50):
        obs, reward, _, _, info = env.step(policy(obs))
        assert reward == float(info["distance"] < 0.05)  # 1 inside the goal radius, else 0
        if reward:
            break
    assert reward == 1.0 and green(obs[IMAGE_KEY]) > 5  # at the goal the cue shows
    obs, reward, *_ = env.step(np.array([0.0, 0.0, 1.0], np.float32))
    obs, reward, *_ = env.step(np.array([0.0, 0.0, 1.0], np.float32))
    assert reward == 0.0 and green(obs[IMAGE_KEY]) == 0  # and goes away with the arm


def test_panda_oracle_vs_random():
    oracle, random = mean_returns("MetaPandaReacher-v0", 3)
    assert oracle > 120 and random < 15
