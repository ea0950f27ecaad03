"""The backends side by side: seconds per update of ``eager``, ``native`` and ``compile``, same run.

    python -m benchmarks.backends            # Rooms-3 H' = 200 and PRN H' = 300, paper sizes, float32
    python -m benchmarks.backends --quick    # tiny sizes: a breakage check, not timing

The modes run interleaved in rounds (a shared machine's speed drifts), after a warm-up that
includes ``torch.compile``'s compilation (its time is reported separately). Writes
``benchmarks/results/backends_<tag>.{json,md}`` with the machine's CPU and vector extensions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.machine import describe, machine_info
from benchmarks.run import PAPER, QUICK, RESULTS, build, mode_context, time_updates
from sb3_mamba.schedules import WorldModelHorizonSchedule

CASES = [("Rooms-3", "MetaRooms-3-v0", {}, 200), ("PRN", "MetaPointRobot-v0", {}, 300)]
QUICK_CASES = [("Rooms-3 (quick)", "MetaRooms-3-v0", {"sub_episode_length": 10}, 20)]
MODES = ("eager", "native", "compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per case and mode")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine_info()
    print(f"# {describe(info)}", flush=True)
    rows = []
    for name, env_id, env_kwargs, prefix in QUICK_CASES if args.quick else CASES:
        model = build(env_id, "mamba", QUICK if args.quick else PAPER, "cpu", env_kwargs, quick=args.quick)
        compile_s = None
        with mode_context(model, "compile"):
            tic = time.perf_counter()
            model.wm_horizon_schedule = WorldModelHorizonSchedule(prefix, prefix, 1)  # pin H'
            model.train(1)  # compiles the posterior step and imagination
            compile_s = time.perf_counter() - tic
        results = time_updates(model, MODES, prefix, 2 if args.quick else args.updates, warmup=1)
        for mode, result in results.items():
            rows.append({"case": name, "H_prime": prefix, "mode": mode, **result})
            print(
                f"{name} H'={prefix} {mode}: {result['s_per_update']:.3f} s/update "
                f"(WM {result['world_model_s']:.3f}, AC {result['actor_critic_s']:.3f})",
                flush=True,
            )
        rows[-1]["first_update_with_compilation_s"] = compile_s
        model.env.close()
    lines = [
        f"# Backends, same run: {describe(info)}",
        "",
        "| case | H' | backend | s/update | x eager | world model | actor-critic | RSSM unroll | imagination |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    eager = {(r["case"], r["H_prime"]): r["s_per_update"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['H_prime']} | {r['mode']} | {r['s_per_update']:.3f} | "
            f"{eager[(r['case'], r['H_prime'])] / r['s_per_update']:.2f}x | {r['world_model_s']:.3f} | "
            f"{r['actor_critic_s']:.3f} | {r['rssm_unroll_s']:.3f} | {r['imagination_s']:.3f} |"
        )
    lines += [
        "",
        "First compile-backend update, compilation included: "
        + ", ".join(
            f"{r['case']} {r['first_update_with_compilation_s']:.0f} s"
            for r in rows
            if r.get("first_update_with_compilation_s")
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    tag = "quick" if args.quick else "cpu"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"backends_{tag}.md").write_text(text)
    (args.out_dir / f"backends_{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
