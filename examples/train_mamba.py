"""Train MAMBA on a small meta-RL env for a few minutes on CPU and watch its return rise.

    python examples/train_mamba.py                       # Rooms-1 with 10-step sub-episodes, 6k env steps
    python examples/train_mamba.py --steps 8000 --device cuda
    python examples/train_mamba.py --env MetaRooms-3-v0 --full-size --steps 200000   # the paper's sizes

The default is a CPU-sized setting chosen so learning shows within minutes:
short sub-episodes (K=2 x T=10), a small world model (deter 128), many
updates per env step (0.5) and short imagination (5 steps). The paper's
settings (``--full-size``) need far more steps than a CPU affords (Rooms:
~6M env steps on a GPU).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mamba import MAMBA
from sb3_mamba.presets import CPU_QUICKSTART
from sb3_mamba_envs.oracles import play_scripted


def clearly_above(mean: float, std: float, num_tasks: int, random_returns: np.ndarray) -> tuple[bool, float, float]:
    """Whether MAMBA's mean return (``std`` over ``num_tasks`` tasks) beats the random policy's by more
    than two standard errors of the difference: both means are estimates, so both spreads count.

    Returns (verdict, difference of the means, two standard errors of it).
    """
    gap = mean - float(np.mean(random_returns))
    two_errors = 2.0 * float(np.sqrt(std**2 / num_tasks + np.var(random_returns) / len(random_returns)))
    return gap > two_errors, gap, two_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MetaRooms-1-v0")
    parser.add_argument("--sub-episode-length", type=int, default=10, help="T (0: the env's own)")
    parser.add_argument("--steps", type=int, default=6000, help="env steps of training")
    parser.add_argument("--evals", type=int, default=4, help="evaluations during training")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--preset", default="mamba", choices=["mamba", "dreamer_tune", "dreamer_vanilla"])
    parser.add_argument("--full-size", action="store_true", help="the paper's sizes instead of the CPU setting")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="mamba_demo.zip")
    args = parser.parse_args()

    env_kwargs = {"sub_episode_length": args.sub_episode_length} if args.sub_episode_length else {}
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 1000, env_kwargs=env_kwargs)
    settings = {} if args.full_size else CPU_QUICKSTART
    model = MAMBA("RSSMPolicy", env, preset=args.preset, seed=args.seed, device=args.device, **settings)

    single = gym.make(args.env, **env_kwargs)
    random_returns, _, _ = play_scripted(single, "random", 100, seed=args.seed)
    oracle_returns, _, _ = play_scripted(single, "oracle", 100, seed=args.seed)
    print(
        f"{args.env} (K={single.unwrapped.num_sub_episodes} x T={single.unwrapped.sub_episode_length}), "
        f"preset {args.preset}, device {model.device}, {torch.get_num_threads()} torch threads"
    )
    print(
        f"random policy: {random_returns.mean():7.2f}   task-aware oracle: {oracle_returns.mean():7.2f}"
        "   (mean meta-episode return over 100 tasks)"
    )
    print(f"{'env steps':>10s} {'updates':>8s} {'minutes':>8s} {'MAMBA return (30 tasks)':>26s}")
    start = time.time()
    chunk = args.steps // args.evals
    for i in range(args.evals):
        model.learn(chunk, reset_num_timesteps=(i == 0))
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=30)
        print(
            f"{model.num_timesteps:10d} {model._n_updates:8d} {(time.time() - start) / 60:8.1f} "
            f"{mean:18.2f} +- {std:5.2f}",
            flush=True,
        )
    model.save(args.save)
    print(f"saved to {args.save}; reload with MAMBA.load({args.save!r})")
    above, gap, two_errors = clearly_above(mean, std, 30, random_returns)
    verdict = "clearly above" if above else "not clearly above"
    print(
        f"final return {mean:.2f}: {verdict} the random policy's {random_returns.mean():.2f} "
        f"(difference {gap:.2f}, two standard errors {two_errors:.2f})"
    )


if __name__ == "__main__":
    main()
