"""End-to-end ``learn()`` wall time at an env's zoo settings, extrapolated to its full budget.

    python -m benchmarks.end_to_end                         # PRN (MetaPointRobot-v0), 60,000 env steps
    python -m benchmarks.end_to_end --env MetaRooms-3-v0 --steps 40000
    python -m benchmarks.end_to_end --quick                 # a breakage check, not timing

Builds MAMBA from ``sb3_mamba/hyperparams/mamba.yml`` (n_envs, train_ratio, H' schedule, sizes,
imagination horizon), collects the random prefill, then times ``learn(steps)``: acting, storing
and every update, as a user's wall clock sees them. The full budget's time is that rate times
``n_timesteps`` (exact for PRN, whose H' is the whole meta-episode from the start; an upper bound
where the schedule starts H' short). Writes ``benchmarks/results/end_to_end_<env>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stable_baselines3.common.env_util import make_vec_env

from benchmarks.machine import describe, machine_info
from sb3_mamba import MAMBA
from sb3_mamba.zoo import load_hyperparams

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MetaPointRobot-v0")
    parser.add_argument("--steps", type=int, default=60_000, help="timed env steps (after the prefill)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine_info()
    print(f"# {describe(info)}", flush=True)
    hyperparams = load_hyperparams("mamba", args.env)
    budget = int(hyperparams.pop("n_timesteps"))
    n_envs = int(hyperparams.pop("n_envs", 1))
    hyperparams.pop("monitor_kwargs", None)
    policy = hyperparams.pop("policy", "RSSMPolicy")
    policy_kwargs = hyperparams.pop("policy_kwargs", None)  # (a dict: load_hyperparams parses literals only)
    env_kwargs = {"sub_episode_length": 10} if args.quick else {}
    if args.quick:
        hyperparams.update(units=32, dyn_deter=32, dyn_stoch=4, dyn_discrete=4, dyn_hidden=16, prefill_episodes=2)
        hyperparams.pop("wm_horizon_initial", None)
        policy_kwargs = {"encoder_units": 32, "encoder_layers": 1}
        args.steps, n_envs = 200, 2
    env = make_vec_env(args.env, n_envs=n_envs, seed=0, env_kwargs=env_kwargs)
    model = MAMBA(policy, env, seed=0, backend=args.backend, policy_kwargs=policy_kwargs, **hyperparams)
    horizon = env.get_attr("horizon")[0]
    model.learn(model.prefill_episodes * horizon + n_envs * horizon)  # the random prefill, then first updates
    updates_before, steps_before = model._n_updates, model.num_timesteps
    tic = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - tic
    steps = model.num_timesteps - steps_before
    row = {
        "env": args.env,
        "backend": args.backend,
        "n_envs": n_envs,
        "train_ratio": model.train_ratio,
        "timed_env_steps": steps,
        "timed_updates": model._n_updates - updates_before,
        "seconds": elapsed,
        "env_steps_per_s": steps / elapsed,
        "budget_env_steps": budget,
        "budget_minutes": budget / (steps / elapsed) / 60,
        "wm_horizon": model.wm_horizon(),
    }
    text = (
        f"# End to end, {args.env} at its zoo settings: {describe(info)}\n\n"
        "| env | backend | envs | updates per env step | H' | timed env steps | updates | seconds | env steps/s | "
        "full budget | minutes for it |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.env} | {args.backend} | {n_envs} | {row['train_ratio']:.5f} | {row['wm_horizon']} | {steps} | "
        f"{row['timed_updates']} | {elapsed:.1f} | {row['env_steps_per_s']:.1f} | {budget:,} | "
        f"{row['budget_minutes']:.0f} |\n"
    )
    print(text)
    tag = args.env + ("_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"end_to_end_{tag}.md").write_text(text)
    (args.out_dir / f"end_to_end_{tag}.json").write_text(json.dumps({"machine": info, **row}, indent=1))
    env.close()


if __name__ == "__main__":
    main()
