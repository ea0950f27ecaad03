"""Reproduce a row of the paper's Table 1: train at the paper's settings, evaluate as the paper does.

    python -m benchmarks.reproduce --env MetaPointRobot-v0 --seeds 3                 # MAMBA and RL^2
    python -m benchmarks.reproduce --env MetaRooms-3-v0 --algos mamba --budget 200000  # a budget you choose
    python -m benchmarks.reproduce --env MetaPointRobot-v0 --report-only              # tables and figures

Per algorithm and seed (``--out``/ENV/ALGO/seed_S/):

* trains with the entry of ``hyperparams/<algo>.yml`` for the env (MAMBA: the reference's
  settings; ``ppo_lstm``: sb3-contrib's RecurrentPPO as RL^2) for the YAML's budget in real env
  steps (``--budget`` overrides; RL^2 gets MAMBA's budget so both see the same data);
* evaluates every 200 collected meta-episodes on a fixed set of 20 tasks (100 on Rooms) with the
  actor's mode and keeps the best model (``MetaEvalCallback``), as the reference does;
* checkpoints every ``--save-freq`` env steps with the replay buffer; a run that finds a checkpoint
  resumes from it exactly (the same command again continues an interrupted run);
* tests the best model on 1000 fresh tasks (``evaluate_meta_policy``, a seed set of its own).

Then writes, for the env: the learning curves (PNG), the per-sub-episode returns (PNG), a markdown
table with the paper's figures beside ours, and ``benchmarks/results/reproduce_<ENV>.json``. The
spread reported is the std over seeds of each seed's mean test return, as the paper's "mean +- std".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env

import sb3_mamba_envs  # noqa: F401  (registers the env IDs)
from benchmarks.machine import describe, machine_info
from sb3_mamba import MAMBA, MetaEvalCallback, evaluate_meta_policy, latest_checkpoint
from sb3_mamba.zoo import load_hyperparams

#: Table 1 (and App. E for RL^2) of the paper: final return, mean +- std, and steps to convergence
PAPER = {
    "MetaPointRobot-v0": {
        "mamba": (242.2, 7.9, "~2M"),
        "ppo_lstm": (239.4, 3.1, "~10M"),
        "dreamer_tune": (239.7, 3.1, "~2M"),
        "dreamer_vanilla": (241.1, 9.9, "~2M"),
    },
    "MetaEscapeRoom-v0": {
        "mamba": (73.9, 3.1, "~4M"),
        "dreamer_tune": (73.2, 7.8, "~4M"),
        "dreamer_vanilla": (68.2, 2.4, "~4M"),
    },
    "MetaRooms-3-v0": {"mamba": (156.2, 1.7, "~6M"), "ppo_lstm": (108.0, 31.7, "~100M")},
    "MetaRooms-4-v0": {"mamba": (136.7, 1.4, "~6M"), "ppo_lstm": (85.1, 19.0, "~100M")},
    "MetaRooms-5-v0": {"mamba": (113.1, 5.7, "~6M"), "ppo_lstm": (72.4, 36.8, "~100M")},
    "MetaRooms-6-v0": {"mamba": (94.5, 1.2, "~6M"), "ppo_lstm": (64.9, 15.9, "~100M")},
    "MetaRooms-7-v0": {"mamba": (73.2, 2.9, "~6M"), "ppo_lstm": (42.9, 22.9, "~100M")},
    "MetaRooms-8-v0": {"mamba": (55.6, 3.0, "~6M"), "ppo_lstm": (29.0, 17.0, "~100M")},
    "MetaReacher-1-v0": {"mamba": (655.5, 12.3, "~10M"), "ppo_lstm": (595.8, 21.4, "~150M")},
    "MetaReacher-2-v0": {"mamba": (285.8, 89.6, "~10M")},
    "MetaReacher-3-v0": {"mamba": (325.0, 47.0, "~10M")},
    "MetaReacher-4-v0": {"mamba": (77.7, 61.1, "~10M")},
}
#: the paper's step counts are the reference's logger's, which counts each training step twice
PAPER_STEP_NOTE = "paper's step counts are the reference logger's (each training env step counted twice)"
EVAL_SEED, TEST_SEED = 10_000, 1_000_000
ALGO_NAMES = {
    "mamba": "MAMBA",
    "ppo_lstm": "RL^2 (RecurrentPPO)",
    "dreamer_tune": "Dreamer-Tune",
    "dreamer_vanilla": "Dreamer-Vanilla",
}


def algo_class(algo: str):
    if algo == "ppo_lstm":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    from sb3_mamba.zoo import ZOO_ALGOS

    return ZOO_ALGOS[algo]


class KeepLatestCheckpoints(CheckpointCallback):
    """SB3's CheckpointCallback that keeps only the newest ``keep`` checkpoints (replay buffers are large)."""

    def __init__(self, *args: Any, keep: int = 2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keep = keep

    def _on_step(self) -> bool:
        result = super()._on_step()
        if self.n_calls % self.save_freq == 0:
            saved = sorted(
                pathlib.Path(self.save_path).glob(f"{self.name_prefix}_*_steps.zip"),
                key=lambda p: int(p.stem.split("_")[-2]),
            )
            for old in saved[: -self.keep]:
                steps = old.stem.split("_")[-2]
                old.unlink(missing_ok=True)
                (old.parent / f"{self.name_prefix}_replay_buffer_{steps}_steps.pkl").unlink(missing_ok=True)
        return result


class WallClock(BaseCallback):
    """Keeps the run's wall time across resumes in ``state.json`` and prints a projection."""

    def __init__(self, state_path: pathlib.Path, budget: int, every: int):
        super().__init__()
        self.state_path, self.budget, self.every = state_path, budget, every
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {"wall_time_s": 0.0}
        self._start = time.time()
        self._base = self.state["wall_time_s"]
        self._steps_at_start = 0

    def _on_training_start(self) -> None:
        self._start, self._steps_at_start = time.time(), self.num_timesteps

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            self.save()
            done = self.num_timesteps - self._steps_at_start
            if done > 0:
                rate = done / (time.time() - self._start)
                left = (self.budget - self.num_timesteps) / rate
                print(
                    f"[{self.num_timesteps}/{self.budget} env steps] {rate:.0f} steps/s, "
                    f"projected {left / 3600:.2f} h to go",
                    flush=True,
                )
        return True

    def save(self) -> None:
        self.state["wall_time_s"] = self._base + time.time() - self._start
        self.state["env_steps"] = int(self.num_timesteps)
        self.state_path.write_text(json.dumps(self.state))

    def _on_training_end(self) -> None:
        self.save()


def train_seed(
    env_id: str,
    algo: str,
    seed: int,
    run_dir: pathlib.Path,
    budget: int | None,
    save_freq: int,
    eval_tasks: int,
    verbose: int,
) -> dict[str, Any]:
    """Train (or resume) one seed, then test its best model; returns the seed's record."""
    record_path = run_dir / "test.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    params = load_hyperparams(algo, env_id)
    if budget is None:
        budget = int(load_hyperparams("mamba", env_id)["n_timesteps"])  # RL^2 at MAMBA's budget
    n_envs = int(params.pop("n_envs", 1))
    params.pop("n_timesteps", None)
    policy = params.pop("policy")
    monitor_kwargs = params.pop("monitor_kwargs", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = make_vec_env(
        env_id, n_envs=n_envs, seed=seed, monitor_dir=str(run_dir / "monitor"), monitor_kwargs=monitor_kwargs
    )
    cls = algo_class(algo)
    checkpoint_dir = run_dir / "checkpoints"
    is_mamba = issubclass(cls, MAMBA)
    latest = latest_checkpoint(checkpoint_dir) if is_mamba and checkpoint_dir.exists() else None
    if latest is not None:
        model_zip, buffer_pkl = latest
        model = cls.load(model_zip, env=env)
        model.load_replay_buffer(buffer_pkl)
        print(f"Resuming {algo} seed {seed} from {model_zip} ({model.num_timesteps} env steps)", flush=True)
    elif not is_mamba and (checkpoint_dir / "latest.zip").exists():
        model = cls.load(checkpoint_dir / "latest.zip", env=env)
        print(f"Resuming {algo} seed {seed} at {model.num_timesteps} env steps (not exact)", flush=True)
    else:
        model = cls(policy, env, seed=seed, verbose=0, **params)
    remaining = budget - model.num_timesteps
    # the reference's evaluation set: 20 tasks, 100 on Rooms (its `rooms` block)
    n_eval_tasks = 100 if env_id.startswith("MetaRooms") and eval_tasks == 20 else eval_tasks
    callbacks: list[BaseCallback] = [
        MetaEvalCallback(
            env_id,
            n_tasks=n_eval_tasks,
            eval_freq=200,
            seed=EVAL_SEED,
            best_model_save_path=str(run_dir / "best"),
            log_path=str(run_dir / "eval"),
            verbose=verbose,
        ),
        WallClock(run_dir / "state.json", budget, every=max(save_freq // n_envs, 1)),
    ]
    if is_mamba:
        callbacks.append(
            KeepLatestCheckpoints(max(save_freq // n_envs, 1), str(checkpoint_dir), save_replay_buffer=True)
        )
    else:
        callbacks.append(_SaveLatest(checkpoint_dir / "latest.zip", max(save_freq // n_envs, 1)))
    if remaining > 0:
        model.learn(
            remaining, callback=CallbackList(callbacks), reset_num_timesteps=latest is None and model.num_timesteps == 0
        )
    state = json.loads((run_dir / "state.json").read_text())
    best = cls.load(run_dir / "best" / "best_model.zip", device="cpu")
    test_start = time.time()
    result = evaluate_meta_policy(best, env_id, n_tasks=1000, seed=TEST_SEED, deterministic=True, n_envs=25)
    record = {
        "env": env_id,
        "algo": algo,
        "seed": seed,
        "env_steps": int(model.num_timesteps),
        "wall_time_s": state["wall_time_s"],
        "test_time_s": time.time() - test_start,
        "n_eval_tasks": n_eval_tasks,
        "test": result.to_dict(),
        "eval": _eval_history(run_dir / "eval" / "evaluations.npz"),
    }
    record_path.write_text(json.dumps(record))
    print(
        f"{algo} seed {seed}: final test {result.mean:.1f} +- {result.std:.1f} over 1000 tasks "
        f"(wall time {state['wall_time_s'] / 3600:.2f} h)",
        flush=True,
    )
    return record


class _SaveLatest(BaseCallback):
    def __init__(self, path: pathlib.Path, every: int):
        super().__init__()
        self.path, self.every = path, every

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(self.path)
        return True


def _eval_history(path: pathlib.Path) -> dict[str, list]:
    with np.load(path) as saved:
        return {
            "timesteps": saved["timesteps"].tolist(),
            "mean": saved["results"].mean(1).tolist(),
            "sub_episode_mean": np.nanmean(saved["sub_episode_results"], axis=1).tolist(),
        }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    means = np.array([r["test"]["mean"] for r in records])
    sub = np.array([[s["mean"] for s in r["test"]["sub_episodes"]] for r in records])
    return {
        "final_test_mean": float(means.mean()),
        "final_test_std": float(means.std()),
        "final_test_per_seed": means.tolist(),
        "final_test_task_std_per_seed": [r["test"]["std"] for r in records],
        "sub_episode_means": sub.mean(0).tolist() if sub.size else [],
        "sub_episode_stds": sub.std(0).tolist() if sub.size else [],
        "n_test_tasks": records[0]["test"]["n_tasks"],
        "env_steps": records[0]["env_steps"],
        "seeds": [r["seed"] for r in records],
        "wall_time_s": [r["wall_time_s"] for r in records],
    }


def report(env_id: str, out: pathlib.Path, results_dir: pathlib.Path) -> dict[str, Any]:
    """Tables, figures and the results JSON from every finished seed under ``out/env_id``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_algo: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / env_id).glob("*/seed_*/test.json")):
        record = json.loads(path.read_text())
        by_algo.setdefault(record["algo"], []).append(record)
    if not by_algo:
        raise SystemExit(f"No finished seed under {out / env_id}.")
    summary = {algo: summarise(records) for algo, records in by_algo.items()}
    figure, (curves, subs) = plt.subplots(1, 2, figsize=(12, 4.5))
    for algo, records in by_algo.items():
        steps = records[0]["eval"]["timesteps"]
        length = min(len(r["eval"]["mean"]) for r in records)
        values = np.array([r["eval"]["mean"][:length] for r in records])
        (line,) = curves.plot(
            steps[:length], values.mean(0), label=f"{ALGO_NAMES.get(algo, algo)} ({len(records)} seeds)"
        )
        curves.fill_between(
            steps[:length],
            values.mean(0) - values.std(0),
            values.mean(0) + values.std(0),
            color=line.get_color(),
            alpha=0.2,
        )
        paper = PAPER.get(env_id, {}).get(algo)
        if paper:
            curves.axhline(
                paper[0],
                color=line.get_color(),
                ls="--",
                lw=1,
                label=f"paper {ALGO_NAMES.get(algo, algo)}: {paper[0]} +- {paper[1]} ({paper[2]})",
            )
        k = np.arange(len(summary[algo]["sub_episode_means"]))
        subs.bar(
            k + 0.4 * list(by_algo).index(algo),
            summary[algo]["sub_episode_means"],
            0.4,
            yerr=summary[algo]["sub_episode_stds"],
            label=ALGO_NAMES.get(algo, algo),
            capsize=3,
        )
    curves.set_xlabel("real env steps (all envs)")
    curves.set_ylabel("meta-episode return, 20 fixed tasks (mode actions)")
    curves.set_title(f"{env_id}: evaluation every 200 meta-episodes; band = +-1 std over seeds", fontsize=9)
    curves.legend(fontsize=7)
    subs.set_xlabel("sub-episode k")
    subs.set_ylabel("return (final test, 1000 tasks)")
    subs.set_title("per sub-episode; error bar = std over seeds", fontsize=9)
    subs.legend(fontsize=7)
    figure.tight_layout()
    figure_path = results_dir / f"reproduce_{env_id}.png"
    figure.savefig(figure_path, dpi=110)
    rows = [
        "| algorithm | ours: final test (1000 tasks), mean +- std over seeds | seeds | real env steps | "
        "wall time per seed (h) | per sub-episode | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary.items():
        paper = PAPER.get(env_id, {}).get(algo)
        subs_text = " / ".join(f"{m:.1f}" for m in s["sub_episode_means"])
        rows.append(
            f"| {ALGO_NAMES.get(algo, algo)} | {s['final_test_mean']:.1f} +- {s['final_test_std']:.1f} | "
            f"{len(s['seeds'])} | {s['env_steps']:,} | "
            f"{', '.join(f'{w / 3600:.2f}' for w in s['wall_time_s'])} | {subs_text} | "
            + (f"{paper[0]} +- {paper[1]} ({paper[2]})" if paper else "-")
            + " |"
        )
    machine = machine_info()
    table = "\n".join(
        [
            f"# Reproduction: {env_id}",
            "",
            *rows,
            "",
            f"Machine: {describe(machine)}. The {PAPER_STEP_NOTE}: the paper's PRN '~2M' is 1M real steps.",
            "",
            f"![curves](reproduce_{env_id}.png)",
            "",
        ]
    )
    (results_dir / f"reproduce_{env_id}.md").write_text(table)
    primary = summary.get("mamba") or next(iter(summary.values()))
    payload = {
        "env": env_id,
        **primary,
        "machine": machine,
        "algorithms": summary,
        "paper": PAPER.get(env_id, {}),
        "eval_protocol": {
            "eval_every_meta_episodes": 200,
            "eval_tasks": by_algo[next(iter(by_algo))][0].get("n_eval_tasks"),
            "eval_seed": EVAL_SEED,
            "test_tasks": 1000,
            "test_seed": TEST_SEED,
            "deterministic": True,
            "model_tested": "best evaluation",
        },
    }
    (results_dir / f"reproduce_{env_id}.json").write_text(json.dumps(payload, indent=1))
    print(table)
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["mamba", "ppo_lstm"],
        choices=["mamba", "ppo_lstm", "dreamer_tune", "dreamer_vanilla"],
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=None, help="real env steps (default: the YAML's MAMBA budget)")
    parser.add_argument("--save-freq", type=int, default=50_000, help="env steps between checkpoints (50000)")
    parser.add_argument("--eval-tasks", type=int, default=20, help="fixed evaluation tasks (20; 100 on Rooms)")
    parser.add_argument("--out", default="runs/reproduce", help="run folders (runs/reproduce)")
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, results_dir = pathlib.Path(args.out), pathlib.Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f"Machine: {describe()}", flush=True)
    if not args.report_only:
        mamba = load_hyperparams("mamba", args.env)
        budget = args.budget or int(mamba["n_timesteps"])
        updates = budget * float(mamba["train_ratio"])
        print(
            f"{args.env}: {budget:,} real env steps per seed ({int(mamba['n_timesteps']):,} at the paper's "
            f"budget), MAMBA ~{updates:,.0f} updates; progress lines project the wall time",
            flush=True,
        )
        for algo in args.algos:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                train_seed(
                    args.env,
                    algo,
                    seed,
                    out / args.env / algo / f"seed_{seed}",
                    args.budget,
                    args.save_freq,
                    args.eval_tasks,
                    args.verbose,
                )
    report(args.env, out, results_dir)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
