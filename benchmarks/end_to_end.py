"""End-to-end ``learn()`` wall time at an env's zoo settings, extrapolated to its full budget.

    python -m benchmarks.end_to_end                         # PRN (MetaPointRobot-v0), 60,000 env steps
    python -m benchmarks.end_to_end --env MetaRooms-3-v0 --steps 40000
    python -m benchmarks.end_to_end --quick                 # a breakage check, not timing
    python -m benchmarks.end_to_end --reference             # ... and the reference's own run, same machine

Builds MAMBA from ``sb3_mamba/hyperparams/mamba.yml`` (n_envs, train_ratio, H' schedule, sizes,
imagination horizon), collects the random prefill, then times ``learn(steps)``: acting, storing
and every update, as a user's wall clock sees them. The full budget's time is that rate times
``n_timesteps`` (exact for PRN, whose H' is the whole meta-episode from the start; a lower bound
where the schedule starts H' short, as on Rooms, whose later updates cost more). The seconds
inside updates are reported apart from the rest (acting and storing).

``--reference`` (where ``../shared/refbench`` is present) then runs the paper's reference code in
the same invocation at its own settings for the same env steps after its prefill (its H' schedule,
its updates per env step; evaluations shortened), and reads its rounds from its timing log: it
collects one meta-episode per env, then updates, and its figure is the env steps of its rounds
over their collection and update seconds (its first round, with its warm-up, left out; ours
starts after the first updates). Writes ``benchmarks/results/end_to_end_<env>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.env_util import make_vec_env

from benchmarks.machine import describe, machine_info
from benchmarks.reference import require_refbench, run_reference
from sb3_mamba import MAMBA
from sb3_mamba.zoo import load_hyperparams

RESULTS = Path(__file__).with_name("results")
#: the reference's block, task and flags per env (its Rooms-3 meta-episode: 2 episodes of 100 steps)
REFERENCE_RUNS = {
    "MetaPointRobot-v0": ("halfcircle", "halfcircle_meta", []),
    "MetaRooms-3-v0": ("rooms", "rooms_3", ["--num_meta_episodes", "2", "--max_episode_length", "100"]),
}


def reference_end_to_end(env_id: str, steps: int, horizon: int) -> dict[str, Any]:
    """The reference's env steps per second over its rounds of ``steps`` env steps after its prefill
    (25 meta-episodes of ``horizon`` steps) and its first round (10 envs)."""
    block, task, flags = REFERENCE_RUNS[env_id]
    # (its counter adds each training-round step twice, the prefill's once)
    budget = 25 * horizon + 2 * (10 * horizon + steps)
    records, output = run_reference(block, task, [*flags, "--steps", str(budget)])
    rounds = [r for r in records if "collect_steps" in r][1:]
    horizons = [r.get("H") for r in records if "upd" in r]
    known = [h for h in horizons if h is not None]
    if not rounds:
        raise RuntimeError(f"the reference's {env_id} run logged no rounds:\n{output}")
    env_steps = sum(r["collect_steps"] for r in rounds)
    collect_s, update_s = sum(r["collect_s"] for r in rounds), sum(r["updates_s"] for r in rounds)
    return {
        "timed_env_steps": env_steps,
        "timed_updates": sum(r["n_updates"] for r in rounds),
        "seconds": collect_s + update_s,
        "update_seconds": update_s,
        "env_steps_per_s": env_steps / (collect_s + update_s),
        "wm_horizon": f"{min(known)}-{max(known)}" if horizons and len(known) == len(horizons) else "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MetaPointRobot-v0")
    parser.add_argument("--steps", type=int, default=60_000, help="timed env steps (after the prefill)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reference", action="store_true", help="also run the reference code (../shared/refbench)")
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
    h_start = model.wm_horizon()
    model.profile_updates = True  # the seconds inside updates (CPU: no synchronisation added)
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
        "update_seconds": sum(model.update_timings["world_model"]) + sum(model.update_timings["actor_critic"]),
        "env_steps_per_s": steps / elapsed,
        "budget_env_steps": budget,
        "budget_minutes": budget / (steps / elapsed) / 60,
        "wm_horizon": f"{h_start}-{model.wm_horizon()}" if h_start != model.wm_horizon() else str(h_start),
    }
    env.close()
    rows = [{"implementation": f"sb3-mamba ({args.backend})", **row}]
    if args.reference and not args.quick:
        require_refbench()
        rows.append({**row, "implementation": "reference", **reference_end_to_end(args.env, steps, horizon)})
        rows[-1]["budget_minutes"] = budget / rows[-1]["env_steps_per_s"] / 60
    text = (
        f"# End to end, {args.env} at its zoo settings: {describe(info)}\n\n"
        "| implementation | envs | updates per env step | H' | timed env steps | updates | seconds | in updates | "
        "env steps/s | full budget | minutes for it |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        text += (
            f"| {r['implementation']} | {n_envs} | {r['train_ratio']:.5f} | {r['wm_horizon']} | "
            f"{r['timed_env_steps']} | {r['timed_updates']} | {r['seconds']:.1f} | {r['update_seconds']:.1f} | "
            f"{r['env_steps_per_s']:.1f} | {budget:,} | {r['budget_minutes']:.0f} |\n"
        )
    if len(rows) > 1:
        ratio = rows[0]["env_steps_per_s"] / rows[1]["env_steps_per_s"]
        text += f"\nsb3-mamba / reference, env steps per second: {ratio:.2f}x\n"
    print(text)
    tag = args.env + ("_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"end_to_end_{tag}.md").write_text(text)
    (args.out_dir / f"end_to_end_{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
