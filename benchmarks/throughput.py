"""Gradient updates/s and acting env steps/s of MAMBA and Dreamer-Tune at the paper's sizes.

    python benchmarks/throughput.py            # Rooms-3 (H=200) and PRN (H=300), paper sizes
    python benchmarks/throughput.py --quick    # tiny sizes, a few updates: a breakage check for CI
    python benchmarks/throughput.py --device cuda --out benchmarks/results/throughput_gpu.json

Paper sizes (Dreamer-Tune = MAMBA): units 128, deter 512, stoch 16x16, hidden 64,
batch 16, L_wm 64, L_ac 512, 4-layer MLP encoder/decoder. MAMBA is timed at
H' = 50 (start of its schedule) and H' = H; Dreamer-Tune on 64-step windows.
The reference implementation's figures on a 2-core CPU (spec/performance.md):
1.717 s per update at H' = 200 and 0.985 s at H' = 50, on Rooms-3 with
imagination horizon 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA
from sb3_mamba.schedules import WorldModelHorizonSchedule

PAPER = dict(units=128, dyn_deter=512, dyn_stoch=16, dyn_discrete=16, dyn_hidden=64, batch_size=16,
             policy_kwargs=dict(encoder_units=128, encoder_layers=4))
QUICK = dict(units=32, dyn_deter=32, dyn_stoch=4, dyn_discrete=4, dyn_hidden=16, batch_size=4,
             policy_kwargs=dict(encoder_units=32, encoder_layers=1))


def build(env_id: str, preset: str, sizes: dict, n_envs: int, device: str, imag_horizon: int,
          env_kwargs: dict) -> MAMBA:
    env = make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs=env_kwargs)
    horizon = env.get_attr("horizon")[0]
    prefill = max(2 * n_envs, 4)
    extra = {"wm_indices": 64, "ac_indices": 512} if preset == "mamba" else {}
    if sizes is QUICK:
        extra = {"wm_indices": 8, "ac_indices": 8} if preset == "mamba" else {"batch_length": 16}
    model = MAMBA("RSSMPolicy", env, preset=preset, seed=0, device=device, prefill_episodes=prefill,
                  train_ratio=1e-9, imag_horizon=imag_horizon, **sizes, **extra)
    model.learn(prefill * horizon)  # random prefill only (train_ratio ~ 0: no update)
    return model


def time_updates(model: MAMBA, horizon_prefix: int | None, updates: int, warmup: int) -> dict:
    if horizon_prefix is not None:  # pin H'
        model.wm_horizon_schedule = WorldModelHorizonSchedule(horizon_prefix, horizon_prefix, 1)
    model.train(warmup)
    model.profile_updates = True
    model.update_timings = {"world_model": [], "actor_critic": []}
    start = time.perf_counter()
    model.train(updates)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / updates
    model.profile_updates = False
    return {
        "seconds_per_update": seconds,
        "updates_per_s": 1.0 / seconds,
        "world_model_s": float(np.mean(model.update_timings["world_model"])),
        "actor_critic_s": float(np.mean(model.update_timings["actor_critic"])),
    }


def acting_steps_per_s(model: MAMBA, steps: int) -> float:
    model.prefill_episodes = 0  # act with the policy
    model.train_ratio = 1e-9
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few updates (CI breakage check)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--imag-horizon", type=int, default=2, help="2 = the reference's Rooms/PRN setting")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else PAPER
    updates, warmup = (2, 1) if args.quick else (args.updates, 2)
    cases = [("MetaRooms-3-v0", {}, 10), ("MetaPointRobot-v0", {}, 10)]
    if args.quick:
        cases = [("MetaRooms-3-v0", {"sub_episode_length": 20}, 2)]

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# device {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, sizes {'quick' if args.quick else 'paper'}, imag_horizon {args.imag_horizon}")
    rows = []
    for env_id, env_kwargs, n_envs in cases:
        for preset in ("mamba", "dreamer_tune"):
            model = build(env_id, preset, sizes, n_envs, args.device, args.imag_horizon, env_kwargs)
            horizon = model.meta_episode_length
            prefixes = sorted({min(50, horizon), horizon}) if preset == "mamba" else [None]
            for prefix in prefixes:
                result = time_updates(model, prefix, updates, warmup)
                row = {"env": env_id, "preset": preset, "H": horizon, "H_prime": prefix or model.batch_length,
                       **result}
                rows.append(row)
                print(f"{env_id:18s} {preset:13s} H'={row['H_prime']:4d}  {result['seconds_per_update']:.3f} s/update"
                      f" ({result['updates_per_s']:.2f}/s; world model {result['world_model_s']:.3f} s, "
                      f"actor-critic {result['actor_critic_s']:.3f} s)", flush=True)
            if preset == "mamba":
                sps = acting_steps_per_s(model, 20 * n_envs if args.quick else horizon * n_envs)
                rows.append({"env": env_id, "preset": preset, "acting_env_steps_per_s": sps, "n_envs": n_envs})
                print(f"{env_id:18s} acting with {n_envs} envs: {sps:,.0f} env steps/s", flush=True)
            model.env.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                              "threads": torch.get_num_threads(), "rows": rows,
                                              "peak_rss_mb": peak_mb}, indent=2))


if __name__ == "__main__":
    main()
