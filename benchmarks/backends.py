"""The backends side by side: seconds per update of ``eager``, ``native`` and ``compile``, same run.

    python -m benchmarks.backends                # Rooms-3 H' = 200 and PRN H' = 300, paper sizes, float32
    python -m benchmarks.backends --reference    # ... and the paper's reference code at the same H', same machine
    python -m benchmarks.backends --quick        # tiny sizes: a breakage check, not timing

On an AVX-512 machine, what an AVX2-only CPU runs (the instruction set limited for ATen, oneDNN,
MKL and our kernels, the reference's run included; the header says so)::

    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
    SB3_MAMBA_NATIVE_ARCH=x86-64-v3 python -m benchmarks.backends --reference --tag cpu_avx2

``--reference`` (where ``../shared/refbench`` is present) runs the reference implementation at its own
settings with H' pinned, after ours in the same invocation: Rooms-3 through ``refbench/run.sh`` and
PRN through ``benchmarks/reference_run.sh halfcircle`` for ~30 updates, and reads the seconds of
each update from its timing log (the first update, with its warm-up, left out).

The modes run interleaved in rounds (a shared machine's speed drifts), after a warm-up that
includes ``torch.compile``'s compilation (its time is reported separately). Writes
``benchmarks/results/backends_<tag>.{json,md}`` with the machine's CPU and vector extensions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe, machine_info
from benchmarks.reference import require_refbench, run_reference
from benchmarks.run import PAPER, QUICK, RESULTS, build, fmt, mode_context, time_updates
from sb3_mamba.schedules import WorldModelHorizonSchedule

CASES = [("Rooms-3", "MetaRooms-3-v0", {}, 200), ("PRN", "MetaPointRobot-v0", {}, 300)]
QUICK_CASES = [("Rooms-3 (quick)", "MetaRooms-3-v0", {"sub_episode_length": 10}, 20)]
MODES = ("auto", "eager", "native", "compile")
#: the reference's own run per case: its command and the flags that pin H' and keep the run short
REFERENCE_RUNS = {
    # (refbench/run.sh's flags for Rooms-3, through reference_run.sh so that the timing log lands in $OUT)
    "Rooms-3": ("rooms", "rooms_3", ["--num_meta_episodes", "2", "--max_episode_length", "100", "--steps", "7000"]),
    "PRN": ("halfcircle", "halfcircle_meta", ["--steps", "10500"]),
}


def reference_timing(case: str, prefix: int) -> dict[str, float]:
    """Median seconds per update of the reference at H' = ``prefix`` (its run's timing log)."""
    block, task, flags = REFERENCE_RUNS[case]
    pinned = ["--initial_wm_horizon", str(prefix), "--train_ratio", "0.03", "--log_every", "1"]
    records, output = run_reference(block, task, [*flags, *pinned])
    rows = [r for r in records if "upd" in r]
    if len(rows) < 3:
        raise RuntimeError(f"the reference's {case} run gave {len(rows)} updates:\n{output}")
    rows = rows[1:]  # (the first update carries the reference's warm-up)
    return {
        "s_per_update": statistics.median(r["update_s"] for r in rows),
        "world_model_s": statistics.median(r["wm_s"] for r in rows),
        "actor_critic_s": statistics.median(r["ac_s"] for r in rows),
        "updates": len(rows),
        "H_prime_measured": rows[-1].get("H", prefix),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per case and mode")
    parser.add_argument("--reference", action="store_true", help="also time the reference code (../shared/refbench)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated backends to time")
    parser.add_argument("--tag", default="cpu", help="names the result files backends_<tag>.{json,md}")
    args = parser.parse_args()
    modes = tuple(args.modes.split(","))
    if "eager" not in modes or not set(modes) <= set(MODES):
        raise SystemExit(f"--modes: a subset of {', '.join(MODES)} that includes eager (the baseline)")
    info = machine_info()
    if info["isa_limits"] and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # inductor's cache is not keyed by ATEN_CPU_CAPABILITY: kernels cached for another
        # instruction set gave the compile backend non-finite losses
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")
    print(f"# {describe(info)}", flush=True)
    rows = []
    for name, env_id, env_kwargs, prefix in QUICK_CASES if args.quick else CASES:
        model = build(env_id, "mamba", QUICK if args.quick else PAPER, "cpu", env_kwargs, quick=args.quick)
        compile_s = None
        if "compile" in modes:
            with mode_context(model, "compile"):
                tic = time.perf_counter()
                model.wm_horizon_schedule = WorldModelHorizonSchedule(prefix, prefix, 1)  # pin H'
                model.train(1)  # compiles the posterior step and imagination
                compile_s = time.perf_counter() - tic
        results = time_updates(model, modes, prefix, 2 if args.quick else args.updates, warmup=1)
        for mode, result in results.items():
            rows.append({"case": name, "H_prime": prefix, "mode": mode, **result})
            print(
                f"{name} H'={prefix} {mode}: {result['s_per_update']:.3f} s/update "
                f"(WM {result['world_model_s']:.3f}, AC {result['actor_critic_s']:.3f})",
                flush=True,
            )
        if compile_s is not None:
            rows[-1]["first_update_with_compilation_s"] = compile_s
        model.env.close()
        if args.reference and not args.quick:
            require_refbench()
            result = reference_timing(name, prefix)
            rows.append({"case": name, "H_prime": prefix, "mode": "reference", **result})
            print(f"{name} H'={prefix} reference: {result['s_per_update']:.3f} s/update", flush=True)
    tag = "quick" if args.quick else args.tag
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"backends_{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    lines = [
        f"# Backends, same run: {describe(info)}",
        "",
        "| case | H' | backend | s/update | x eager | x reference | world model | actor-critic | RSSM unroll | "
        "imagination |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    seconds = {(r["case"], r["H_prime"], r["mode"]): r["s_per_update"] for r in rows}
    for r in rows:
        key = (r["case"], r["H_prime"])
        reference = seconds.get((*key, "reference"))
        lines.append(
            f"| {r['case']} | {r['H_prime']} | {r['mode']} | {r['s_per_update']:.3f} | "
            f"{seconds[(*key, 'eager')] / r['s_per_update']:.2f}x | "
            f"{'-' if reference is None else format(reference / r['s_per_update'], '.2f') + 'x'} | "
            f"{r['world_model_s']:.3f} | {r['actor_critic_s']:.3f} | {fmt(r.get('rssm_unroll_s'))} | "
            f"{fmt(r.get('imagination_s'))} |"
        )
    compilations = [
        f"{r['case']} {r['first_update_with_compilation_s']:.0f} s"
        for r in rows
        if r.get("first_update_with_compilation_s")
    ]
    if compilations:
        lines += ["", "First compile-backend update, compilation included: " + ", ".join(compilations)]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out_dir / f"backends_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
