"""Return at a fixed budget for several MAMBA settings and seeds, one process per run.

    python benchmarks/learning_sweep.py --workers 2                      # the CPU quickstart, 3 seeds
    python benchmarks/learning_sweep.py --workers 14 --variants all      # every variant below

Each run trains on Rooms-1 with K=2 x T=10 (random ~0.3, oracle ~17.6) and is
evaluated (50 tasks, deterministic) at evenly spaced points of its budget.
The table answers "which small setting learns fast and reliably?", the
question behind ``sb3_mamba.presets.CPU_QUICKSTART`` and the learning test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "quickstart": {},
    "ac_lr_1e-4": {"actor_lr": 1e-4, "critic_lr": 1e-4},
    "imag_10": {"imag_horizon": 10, "ac_indices": 64},
    "ratio_1": {"train_ratio": 1.0},
    "deter_256": {"dyn_deter": 256, "units": 128},
}


def run(job: tuple[str, int, int, int, str]) -> dict:
    name, seed, budget, points, env_id = job
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_mamba import MAMBA
    from sb3_mamba.presets import CPU_QUICKSTART

    torch.set_num_threads(1)
    env_kwargs = {"sub_episode_length": 10}
    env = make_vec_env(env_id, n_envs=4, seed=seed, env_kwargs=env_kwargs)
    eval_env = make_vec_env(env_id, n_envs=1, seed=1000 + seed, env_kwargs=env_kwargs)
    model = MAMBA("RSSMPolicy", env, seed=seed, device="cpu", **{**CPU_QUICKSTART, **VARIANTS[name]})
    start, curve = time.time(), []
    for i in range(points):
        model.learn(budget // points, reset_num_timesteps=(i == 0))
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=50, deterministic=True)
        curve.append((model.num_timesteps, float(mean)))
    return {
        "variant": name,
        "seed": seed,
        "curve": curve,
        "minutes": (time.time() - start) / 60,
        "updates": model._n_updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["quickstart"], help=f"any of {list(VARIANTS)} or 'all'")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=6000, help="env steps per run")
    parser.add_argument("--points", type=int, default=3, help="evaluations per run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--env", default="MetaRooms-1-v0")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    jobs = [(name, seed, args.budget, args.points, args.env) for name in names for seed in range(args.seeds)]
    results = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(run, jobs):  # report each run as it ends
            results.append(result)
            print(json.dumps(result), flush=True)
    results.sort(key=lambda r: (names.index(r["variant"]), r["seed"]))
    steps = [s for s, _ in results[0]["curve"]]
    print("| variant | " + " | ".join(f"return at {s} steps (seeds)" for s in steps) + " | minutes |")
    print("|---|" + "---|" * (len(steps) + 1))
    for name in names:
        rows = [r for r in results if r["variant"] == name]
        cells = []
        for i in range(len(steps)):
            values = [r["curve"][i][1] for r in rows]
            cells.append(f"{np.mean(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})")
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean([r['minutes'] for r in rows]):.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
