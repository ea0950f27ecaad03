"""Quickstart: train MAMBA, evaluate it, save it, load it, and act with its recurrent state.

python examples/quickstart.py                 # ~3 minutes on a 2-core CPU
python examples/quickstart.py --steps 300     # a smoke run
"""

from __future__ import annotations

import argparse

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mamba import MAMBA
from sb3_mamba.presets import CPU_QUICKSTART


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--path", default="mamba_quickstart.zip")
    args = parser.parse_args()

    # One Gymnasium episode = one meta-episode (here 2 sub-episodes of 10 steps on one hidden task).
    env = make_vec_env("MetaRooms-1-v0", n_envs=4, seed=0, env_kwargs={"sub_episode_length": 10})
    model = MAMBA("RSSMPolicy", env, seed=0, verbose=0, **CPU_QUICKSTART)
    model.learn(total_timesteps=args.steps)

    mean, std = evaluate_policy(model, env, n_eval_episodes=20)
    print(f"evaluation return: {mean:.2f} +- {std:.2f}")

    model.save(args.path)
    model = MAMBA.load(args.path, env=env)

    # Acting by hand: pass the state back and flag new meta-episodes, like RecurrentPPO.
    obs = env.reset()
    state, episode_start = None, np.ones(env.num_envs, dtype=bool)
    returns = np.zeros(env.num_envs)
    for _ in range(20):  # one meta-episode (H = 20)
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        obs, rewards, episode_start, infos = env.step(action)
        returns += rewards
    print(f"returns of one meta-episode per env after loading: {returns.round(1)}")
    print("per-sub-episode returns of env 0:", infos[0]["sub_episode_returns"])


if __name__ == "__main__":
    main()
