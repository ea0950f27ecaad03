"""Random vs oracle returns and env steps/s of every registered meta-RL env (one env, this process).

    python benchmarks/env_throughput.py                # 100 meta-episodes per policy and env
    python benchmarks/env_throughput.py --episodes 5   # quick look

Steps/s is wall time of ``env.step`` with the policy's cost included (the
oracle of Reacher-N computes a Jacobian per step; the random policy samples
the action space), so the random row is the closer figure for the env itself.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import gymnasium as gym

from sb3_mamba_envs import ENV_IDS
from sb3_mamba_envs.oracles import play_scripted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--envs", nargs="*", default=list(ENV_IDS))
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    print(
        f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{args.episodes} meta-episodes per policy"
    )
    print("| env | H | random return | oracle return | env steps/s (random) |")
    print("|---|---|---|---|---|")
    rows = []
    for env_id in args.envs:
        env = gym.make(env_id)
        random, _, random_sps = play_scripted(env, "random", args.episodes)
        try:
            oracle, _, _ = play_scripted(env, "oracle", args.episodes)
        except NotImplementedError:  # Humanoid-Dir: no scripted walker
            oracle = None
        rows.append(
            {
                "env": env_id,
                "horizon": env.unwrapped.horizon,
                "random_mean": float(random.mean()),
                "random_std": float(random.std()),
                "oracle_mean": None if oracle is None else float(oracle.mean()),
                "oracle_std": None if oracle is None else float(oracle.std()),
                "env_steps_per_s": random_sps,
            }
        )
        oracle_text = "-" if oracle is None else f"{oracle.mean():.1f} +- {oracle.std():.1f}"
        print(
            f"| {env_id} | {env.unwrapped.horizon} | {random.mean():.1f} +- {random.std():.1f} "
            f"| {oracle_text} | {random_sps:,.0f} |",
            flush=True,
        )
        env.close()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
