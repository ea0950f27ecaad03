"""sb3-mamba's performance figures, one entry point.

    python -m benchmarks.run                  # paper sizes on this machine (~20 min on a 2-core CPU)
    python -m benchmarks.run --quick          # tiny sizes, a breakage check for CI (< 2 min), not timing
    python -m benchmarks.run --device cuda    # on a GPU

Prints each table and writes ``benchmarks/results/benchmark_<tag>.json`` and ``.md``
(tag: ``cpu``/``cuda`` plus ``_quick``). Sections:

* **update**: seconds per gradient update at the paper's sizes (units 128, deter 512,
  stoch 16x16, hidden 64, batch 16, L_wm 64, L_ac 512, one imagined transition as the
  reference's ``imag_horizon: 2`` on Rooms/PRN, which counts the start state; the pixel envs add
  the CNN encoder/decoder, with 9 transitions, its 10), split into RSSM unroll
  (forward), the rest of the world-model step (heads, losses, backward, Adam), imagination (forward) and the rest of the
  actor-critic step; for each backend (``MAMBA(backend=...)``, :mod:`sb3_mamba.kernels`):
  ``eager`` (the modules' own math, the same-run baseline), ``native`` and, with
  ``--compile``, ``compile``, in float32, and ``native`` under bfloat16 autocast; on Rooms-3
  and PRN also ``eager`` under bfloat16 autocast (the bfloat16 mode's like-for-like baseline).
  Each case runs in its own process, so its peak memory is its own.
* **scaling**: update cost against H' = 50 ... 800 and its least-squares slope.
* **schedule**: wall time of all updates of a full run with the world-model horizon
  schedule against a fixed H' = H, from the fitted cost model.
* **acting**: env steps/s of the MAMBA policy with 1, 4, 8 envs, and of sb3-contrib's
  RecurrentPPO (RL^2) with its update time per rollout, on the same env.
* **training**: end-to-end ``learn()`` env steps/s on Rooms-3 with 10 envs at the reference's
  update ratio (0.05 per env step), H' = 50 and 200, float32 and bfloat16, next to the
  reference's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA
from sb3_mamba.kernels import select_backend
from sb3_mamba.kernels.layers import PaddedLinear
from sb3_mamba.mamba import _imagination_starts
from sb3_mamba.schedules import WorldModelHorizonSchedule

RESULTS = Path(__file__).with_name("results")
#: The reference implementation (../shared/refbench/run.sh), Rooms-3, measured once on another 2-core
#: machine: not a same-run figure (issue 18 replaces it by a run beside ours).
REFERENCE_CPU = {50: 0.985, 200: 1.717}
#: ... and its end-to-end training throughput there (env steps/s, 10 envs, 0.05 updates per env step)
REFERENCE_TRAINING_CPU = {50: 19.6, 200: 11.4}
#: the reference's Rooms / PRN sizes: its encoder and decoder MLPs are mlp_units 512 x mlp_layers 4
PAPER = dict(
    units=128,
    dyn_deter=512,
    dyn_stoch=16,
    dyn_discrete=16,
    dyn_hidden=64,
    batch_size=16,
    policy_kwargs=dict(encoder_units=512, encoder_layers=4),
)
VANILLA = dict(
    units=512,
    dyn_deter=512,
    dyn_stoch=32,
    dyn_discrete=32,
    dyn_hidden=512,
    batch_size=16,
    policy_kwargs=dict(encoder_units=512, encoder_layers=4),
)
QUICK = dict(
    units=32,
    dyn_deter=32,
    dyn_stoch=4,
    dyn_discrete=4,
    dyn_hidden=16,
    batch_size=4,
    policy_kwargs=dict(encoder_units=32, encoder_layers=1),
)
#: a backend (sb3_mamba.kernels), "_bfloat16" for bfloat16 autocast
MODES = ("eager", "native", "native_bfloat16")
#: + eager under bfloat16 autocast: the like-for-like baseline of the bfloat16 mode
MODES_WITH_EAGER_BF16 = ("eager", "eager_bfloat16", "native", "native_bfloat16")


# -- building and timing -------------------------------------------------------------------------
def build(
    env_id: str,
    preset: str,
    sizes: dict,
    device: str,
    env_kwargs: dict | None = None,
    n_envs: int = 4,
    quick: bool = False,
    imag_horizon: int | None = 1,
) -> MAMBA:
    """A model whose replay holds a few random meta-episodes (no update yet)."""
    env = make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs=env_kwargs or {})
    horizon = env.get_attr("horizon")[0]
    extra: dict[str, Any] = {"wm_indices": 64, "ac_indices": 512} if preset == "mamba" else {}
    if quick:
        extra = {"wm_indices": 8, "ac_indices": 16} if preset == "mamba" else {"batch_length": 16}
    model = MAMBA(
        "RSSMPolicy",
        env,
        preset=preset,
        seed=0,
        device=device,
        prefill_episodes=2 * n_envs,
        train_ratio=1e-9,
        imag_horizon=imag_horizon if preset == "mamba" else None,
        **sizes,
        **extra,
    )
    model.learn(2 * horizon * n_envs)  # random prefill only: two meta-episodes per env
    return model


def sync(model: MAMBA) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


@contextlib.contextmanager
def mode_context(model: MAMBA, mode: str):
    """Train ``model`` with ``mode``'s backend and precision inside the block."""
    model.precision = "bfloat16" if mode.endswith("bfloat16") else "float32"
    model.kernels = select_backend(
        mode.removesuffix("_bfloat16"), model.device, model.policy.world_model.rssm, model.batch_size
    )
    padded = [layer for layer in model.policy.modules() if isinstance(layer, PaddedLinear)]
    if model.kernels.prepare is not None:
        model.kernels.prepare(model.policy)
    else:  # the eager backend: plain nn.Linear heads (same parameters)
        for layer in padded:
            layer.__class__ = torch.nn.Linear
    try:
        yield
    finally:
        for layer in padded:
            layer.__class__ = PaddedLinear


def time_forward_parts(model: MAMBA, repeats: int) -> tuple[float, float]:
    """Seconds of the RSSM unroll and of the imagination rollout (forward passes, as in an update)."""
    wm, ac = model.policy.world_model, model.policy.actor_critic
    batch = model._sample()
    obs, action, is_first, mask = (batch[k] for k in ("obs", "action", "is_first", "mask"))
    unroll, imagine = [], []
    for _ in range(repeats):
        with model._autocast():
            embed = wm.encode(obs)
            sync(model)
            tic = time.perf_counter()
            if model.kernels.observe is None:
                post, _ = wm.rssm.observe(embed, action, is_first)
            else:
                post, _ = model.kernels.observe(wm.rssm, embed, action, is_first)
            sync(model)
            unroll.append(time.perf_counter() - tic)
            starts = _imagination_starts(post, mask, model.ac_indices)
            tic = time.perf_counter()
            if model.kernels.imagine is None:
                ac.imagine(wm, starts, model.imag_horizon)
            else:
                model.kernels.imagine(ac, wm, starts, model.imag_horizon)
            sync(model)
            imagine.append(time.perf_counter() - tic)
    return float(np.median(unroll)), float(np.median(imagine))


def time_updates(
    model: MAMBA, modes: tuple[str, ...], prefix: int | None, updates: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Seconds per update of each mode at H' = ``prefix``, the modes interleaved in rounds.

    A shared machine's speed drifts over minutes; running the modes
    in turns (3 rounds) keeps the ratios between them fair. Each round of a mode
    starts with an untimed update.
    """
    if prefix is not None:  # pin H'
        model.wm_horizon_schedule = WorldModelHorizonSchedule(prefix, prefix, 1)
    for mode in modes:
        with mode_context(model, mode):
            model.train(warmup)
    rounds = min(3, updates)
    timings = {mode: {"world_model": [], "actor_critic": [], "wall": []} for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            with mode_context(model, mode):
                # one untimed update after each switch: in one run the mode that followed compile
                # measured slower than the same code did when run apart
                model.train(1)
                model.profile_updates = True
                model.update_timings = {"world_model": [], "actor_critic": []}
                sync(model)
                tic = time.perf_counter()
                model.train(max(1, updates // rounds))
                sync(model)
                timings[mode]["wall"].append((time.perf_counter() - tic) / max(1, updates // rounds))
                model.profile_updates = False
                for key in ("world_model", "actor_critic"):
                    timings[mode][key] += model.update_timings[key]
    results = {}
    for mode, times in timings.items():
        # medians of the per-update times: robust to a noisy neighbour on a shared machine
        per_update = np.add(times["world_model"], times["actor_critic"])
        result = {
            "s_per_update": float(np.median(per_update)),
            "mean_wall_s_per_update": float(np.mean(times["wall"])),
            "world_model_s": float(np.median(times["world_model"])),
            "actor_critic_s": float(np.median(times["actor_critic"])),
        }
        with mode_context(model, mode):
            unroll, imagine = time_forward_parts(model, max(2, updates // 2))
        result.update(
            rssm_unroll_s=unroll,
            wm_rest_s=result["world_model_s"] - unroll,
            imagination_s=imagine,
            ac_rest_s=result["actor_critic_s"] - imagine,
        )
        results[mode] = result
    return results


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- sections --------------------------------------------------------------------------------------
def update_cases(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [
            {
                "name": "Rooms-3 MAMBA (quick)",
                "env": "MetaRooms-3-v0",
                "env_kwargs": {"sub_episode_length": 10},
                "preset": "mamba",
                "sizes": "QUICK",
                "prefixes": [10, 20],
                "modes": MODES_WITH_EAGER_BF16,
            }
        ]
    return [
        {
            "name": "Rooms-3 MAMBA",
            "env": "MetaRooms-3-v0",
            "preset": "mamba",
            "sizes": "PAPER",
            "prefixes": [50, 200],
            "modes": MODES_WITH_EAGER_BF16,
        },
        {
            "name": "PRN MAMBA",
            "env": "MetaPointRobot-v0",
            "preset": "mamba",
            "sizes": "PAPER",
            "prefixes": [300],
            "modes": MODES_WITH_EAGER_BF16,
        },
        {
            "name": "Rooms-3 Dreamer-Tune",
            "env": "MetaRooms-3-v0",
            "preset": "dreamer_tune",
            "sizes": "PAPER",
            "prefixes": [None],
        },
        {
            "name": "Rooms-3 Dreamer-Vanilla sizes",
            "env": "MetaRooms-3-v0",
            "preset": "dreamer_vanilla",
            "sizes": "VANILLA",
            "prefixes": [None],
        },
        # pixels: CNN encoder over every step of the prefix, transposed-CNN decoder at the L_wm indices
        # (imagination horizon 9 transitions there: the reference's imag_horizon 10, which counts the start)
        {
            "name": "Reacher-pixels MAMBA",
            "env": "MetaReacherPixels-v0",
            "preset": "mamba",
            "sizes": "PAPER",
            "prefixes": [50],
            "imag_horizon": 9,
            "updates": 3,
        },
        {
            "name": "Panda MAMBA",
            "env": "MetaPandaReacher-v0",
            "preset": "mamba",
            "sizes": "PAPER",
            "prefixes": [150],
            "imag_horizon": 9,
            "updates": 3,
        },
    ]


def run_update_case(case: dict[str, Any], device: str, updates: int, quick: bool) -> list[dict[str, Any]]:
    sizes = {"PAPER": PAPER, "VANILLA": VANILLA, "QUICK": QUICK}[case["sizes"]]
    model = build(
        case["env"],
        case["preset"],
        sizes,
        device,
        case.get("env_kwargs"),
        quick=quick,
        imag_horizon=case.get("imag_horizon", 1),
    )
    rows = []
    for prefix in case["prefixes"]:
        rss_before = peak_rss_mb()
        results = time_updates(
            model, tuple(case.get("modes", MODES)), prefix, case.get("updates", updates), warmup=1 if quick else 2
        )
        for mode, result in results.items():
            rows.append(
                {
                    "case": case["name"],
                    "H": model.meta_episode_length,
                    "H_prime": prefix or model.batch_length,
                    "mode": mode,
                    **result,
                    "peak_rss_mb": peak_rss_mb(),
                    "update_rss_increase_mb": peak_rss_mb() - rss_before,
                }
            )
    model.env.close()
    return rows


def section_update(args) -> list[dict[str, Any]]:
    rows = []
    for case in update_cases(args.quick):
        if args.compile:
            case = {**case, "modes": (*case.get("modes", MODES), "compile")}
        if args.quick:  # in-process: fast enough, and no second interpreter start
            rows += run_update_case(case, args.device, args.updates, True)
            continue
        command = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--device",
            args.device,
            "--updates",
            str(args.updates),
            "--threads",
            str(torch.get_num_threads()),
            "--case",
            json.dumps(case),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def section_scaling(args) -> dict[str, Any]:
    """Update cost against H' on Rooms-3 with T = 400 (H = 800)."""
    sizes, prefixes = (QUICK, [10, 20, 40]) if args.quick else (PAPER, [50, 100, 200, 400, 800])
    model = build(
        "MetaRooms-3-v0",
        "mamba",
        sizes,
        args.device,
        {"sub_episode_length": prefixes[-1] // 2},
        n_envs=2,
        quick=args.quick,
    )
    rows = []
    for prefix in prefixes:
        result = time_updates(model, ("native",), prefix, max(2, args.updates // 2), warmup=1)["native"]
        rows.append({"H_prime": prefix, **result})
    model.env.close()
    h = np.array(prefixes, dtype=float)
    fits = {}
    for key in ("s_per_update", "world_model_s", "actor_critic_s"):
        y = np.array([r[key] for r in rows])
        slope, intercept = np.polyfit(h, y, 1)
        residual = y - (slope * h + intercept)
        r2 = 1.0 - float((residual**2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
        fits[key] = {"slope_s_per_step": float(slope), "intercept_s": float(intercept), "r2": r2}
    return {"rows": rows, "fits": fits}


def schedule_saving(
    intercept: float, slope: float, horizon: int, initial: int, ramp_steps: float, budget: float
) -> dict[str, float]:
    """Update wall time with the H' schedule relative to a fixed H' = H (updates spread evenly over env steps)."""
    schedule = WorldModelHorizonSchedule(initial, horizon, int(ramp_steps))
    steps = np.linspace(0, budget, 10_001)
    with_schedule = float(np.mean([intercept + slope * schedule(int(s)) for s in steps]))
    fixed = intercept + slope * horizon
    return {"relative_update_time": with_schedule / fixed, "saving": 1.0 - with_schedule / fixed}


def section_schedule(scaling: dict[str, Any]) -> list[dict[str, Any]]:
    fit = scaling["fits"]["s_per_update"]
    # budgets, H and N_WM of hyperparams/mamba.yml; Humanoid-Dir's N_WM 15e6 over 50M steps (paper)
    cases = [
        ("Rooms-3", 200, 5e6, 6e6),
        ("PRN", 300, 5e6, 2e6),
        ("Reacher-1", 900, 5e6, 10e6),
        ("Humanoid-Dir (paper)", 600, 15e6, 50e6),
    ]
    return [
        {
            "env": name,
            "H": horizon,
            "N_WM": ramp,
            "budget": budget,
            **schedule_saving(fit["intercept_s"], fit["slope_s_per_step"], horizon, 50, ramp, budget),
        }
        for name, horizon, ramp, budget in cases
    ]


def section_acting(args) -> list[dict[str, Any]]:
    from sb3_contrib import RecurrentPPO

    rows = []
    sizes = QUICK if args.quick else PAPER
    steps = 40 if args.quick else 1600
    for n_envs in (1, 4, 8):
        model = build("MetaRooms-3-v0", "mamba", sizes, args.device, n_envs=n_envs, quick=args.quick)
        model.prefill_episodes = 0  # act with the policy, no updates
        sync(model)
        tic = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        sync(model)
        rows.append({"agent": "MAMBA", "n_envs": n_envs, "env_steps_per_s": steps / (time.perf_counter() - tic)})
        model.env.close()

        env = make_vec_env("MetaRooms-3-v0", n_envs=n_envs, seed=0)
        n_steps = 20 if args.quick else 200
        ppo = RecurrentPPO(
            "MlpLstmPolicy",
            env,
            n_steps=n_steps,
            batch_size=min(800, n_steps * n_envs),
            n_epochs=4,
            policy_kwargs={"lstm_hidden_size": 128, "n_lstm_layers": 1},
            device=args.device,
            seed=0,
        )
        ppo.learn(n_steps * n_envs)  # warm-up rollout + update
        timings = {"collect": 0.0, "train": 0.0}
        original_train = ppo.train

        def timed_train(original_train=original_train, timings=timings):
            tic = time.perf_counter()
            original_train()
            timings["train"] += time.perf_counter() - tic

        ppo.train = timed_train
        rollouts = 1 if args.quick else 3
        tic = time.perf_counter()
        ppo.learn(rollouts * n_steps * n_envs, reset_num_timesteps=False)
        total = time.perf_counter() - tic
        collect = total - timings["train"]
        rows.append(
            {
                "agent": "RecurrentPPO (RL^2)",
                "n_envs": n_envs,
                "env_steps_per_s": rollouts * n_steps * n_envs / collect,
                "update_s_per_rollout": timings["train"] / rollouts,
                "end_to_end_env_steps_per_s": rollouts * n_steps * n_envs / total,
            }
        )
        env.close()
    return rows


def section_training(args) -> list[dict[str, Any]]:
    """End-to-end ``learn()`` throughput on Rooms-3 at the reference's update ratio (acting and updates).

    10 envs, 0.05 updates per env step (the reference's Rooms ``train_ratio`` 0.1 with K = 2), H'
    pinned, paper sizes: what a user's wall clock sees, compared with the reference's figure.
    """
    sizes, prefixes, steps = (QUICK, (10,), 100) if args.quick else (PAPER, (50, 200), 2000)
    model = build("MetaRooms-3-v0", "mamba", sizes, args.device, n_envs=10, quick=args.quick)
    model.train_ratio = 0.05
    rows = []
    for prefix in prefixes:
        model.wm_horizon_schedule = WorldModelHorizonSchedule(prefix, prefix, 1)
        for precision in ("float32", "bfloat16"):
            model.precision = precision
            model.learn(steps // 10, reset_num_timesteps=False)  # warm-up: this H' and precision's first updates
            updates_before = model._n_updates
            sync(model)
            tic = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            sync(model)
            elapsed = time.perf_counter() - tic
            rows.append(
                {
                    "H_prime": prefix,
                    "precision": precision,
                    "env_steps": steps,
                    "updates": model._n_updates - updates_before,
                    "env_steps_per_s": steps / elapsed,
                    "reference_env_steps_per_s": REFERENCE_TRAINING_CPU.get(prefix) if args.device == "cpu" else None,
                }
            )
    model.env.close()
    return rows


# -- report ------------------------------------------------------------------------------------------
def fmt(value: float | None) -> str:
    """Seconds to three decimals, "-" where a case did not measure them."""
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# sb3-mamba benchmark ({report['device']}, torch {report['torch']}, {report['threads']} threads)", ""]
    lines += [
        "## Seconds per gradient update",
        "",
        "| case | H' | mode | s/update | x eager | x eager, same precision | RSSM unroll | WM rest | "
        "imagination | AC rest | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seconds = {(r["case"], r["H_prime"], r["mode"]): r["s_per_update"] for r in report["update"]}
    for r in report["update"]:
        key = (r["case"], r["H_prime"])
        ratio = seconds[(*key, "eager")] / r["s_per_update"]
        # bfloat16 against the eager backend under the same autocast, where the case measured it
        same = seconds.get((*key, "eager_bfloat16" if r["mode"].endswith("bfloat16") else "eager"))
        same_ratio = "-" if same is None else f"{same / r['s_per_update']:.2f}x"
        lines.append(
            f"| {r['case']} | {r['H_prime']} | {r['mode']} | {r['s_per_update']:.3f} | {ratio:.2f}x | "
            f"{same_ratio} | "
            f"{fmt(r.get('rssm_unroll_s'))} | {fmt(r.get('wm_rest_s'))} | {fmt(r.get('imagination_s'))} | "
            f"{fmt(r.get('ac_rest_s'))} | {r['peak_rss_mb']:.0f} |"
        )
    if report.get("reference_cpu"):
        lines += [
            "",
            "Reference implementation, measured once on another 2-core machine (not this run): "
            + ", ".join(f"H' = {h}: {s} s" for h, s in report["reference_cpu"].items()),
        ]
    sc = report["scaling"]
    lines += [
        "",
        "## Update cost against H' (native, float32)",
        "",
        "| H' | s/update | world model | actor-critic |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['H_prime']} | {r['s_per_update']:.3f} | {r['world_model_s']:.3f} | {r['actor_critic_s']:.3f} |"
        for r in sc["rows"]
    ]
    for key, fit in sc["fits"].items():
        lines.append(
            f"\n{key}: {fit['intercept_s']:.4f} s + {fit['slope_s_per_step'] * 1e3:.3f} ms x H' (R^2 {fit['r2']:.3f})"
        )
    lines += [
        "",
        "## World-model horizon schedule: update wall time vs fixed H' = H (from the fit)",
        "",
        "| env | H | N_WM | budget | relative time | saving |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['env']} | {r['H']} | {r['N_WM']:.0e} | {r['budget']:.0e} | {r['relative_update_time']:.2f} | "
        f"{r['saving']:.0%} |"
        for r in report["schedule"]
    ]
    lines += [
        "",
        "## Acting (Rooms-3)",
        "",
        "| agent | envs | env steps/s | update s/rollout | end-to-end env steps/s |",
        "|---|---|---|---|---|",
    ]
    for r in report["acting"]:
        lines.append(
            f"| {r['agent']} | {r['n_envs']} | {r['env_steps_per_s']:,.0f} | "
            f"{fmt(r.get('update_s_per_rollout'))} | "
            f"{'-' if 'end_to_end_env_steps_per_s' not in r else format(r['end_to_end_env_steps_per_s'], ',.0f')} |"
        )
    if report.get("training"):
        lines += [
            "",
            "## End-to-end training (Rooms-3, 10 envs, 0.05 updates per env step, H' pinned)",
            "",
            "| H' | precision | env steps | updates | env steps/s | reference (spec) | x reference |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["training"]:
            ref = r.get("reference_env_steps_per_s")
            lines.append(
                f"| {r['H_prime']} | {r['precision']} | {r['env_steps']} | {r['updates']} | "
                f"{r['env_steps_per_s']:.1f} | {'-' if ref is None else ref} | "
                f"{'-' if ref is None else format(r['env_steps_per_s'] / ref, '.2f') + 'x'} |"
            )
    lines += [
        "",
        f"Replay buffer: {report['buffer_bytes_per_step']} bytes per stored step on Rooms-3 "
        f"({report['buffer_bytes_per_step'] * 1e6 / 2**20:.0f} MiB at the default 1e6 capacity).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few updates (CI breakage check)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per case and mode")
    parser.add_argument("--sections", default="update,scaling,acting,training", help="comma-separated subset")
    parser.add_argument("--compile", action="store_true", help="also time the compile backend (compiles first)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one update case per process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case is not None:
        print(json.dumps(run_update_case(json.loads(args.case), args.device, args.updates, False)))
        return
    if args.quick:
        args.updates = 2
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    )
    report: dict[str, Any] = {
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "quick": args.quick,
        "reference_cpu": REFERENCE_CPU if args.device == "cpu" else None,
    }
    print(
        f"# {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        f"{' (quick sizes: not for timing)' if args.quick else ''}",
        flush=True,
    )
    sections = set(args.sections.split(","))
    report["update"] = section_update(args) if "update" in sections else []
    report["scaling"] = section_scaling(args) if "scaling" in sections else {"rows": [], "fits": {}}
    report["schedule"] = section_schedule(report["scaling"]) if report["scaling"]["fits"] else []
    report["acting"] = section_acting(args) if "acting" in sections else []
    report["training"] = section_training(args) if "training" in sections else []
    env = make_vec_env("MetaRooms-3-v0", n_envs=1)
    report["buffer_bytes_per_step"] = int(4 * (env.observation_space.shape[0] + env.action_space.n) + 5)
    text = markdown(report)
    print(text)
    tag = ("cuda" if args.device.startswith("cuda") else "cpu") + ("_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"benchmark_{tag}.json").write_text(json.dumps(report, indent=2, default=float))
    (args.out_dir / f"benchmark_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
