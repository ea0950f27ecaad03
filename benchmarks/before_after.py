"""Seconds per update of this checkout against an earlier commit, on the same machine, runs alternated.

    python -m benchmarks.before_after --rev 0a60d67 --mode-before optimised
    python -m benchmarks.before_after --rev HEAD~3 --quick      # tiny sizes: a breakage check

The earlier commit is checked out into a temporary git worktree and imported from there (its
own ``benchmarks.run``) in a subprocess; each subprocess builds the model, warms up and times
updates with ``time_updates`` at a pinned H'. Before and after alternate for ``--rounds`` rounds
(a shared machine drifts), and the medians are compared. Writes
``benchmarks/results/before_after_<rev>.{md,json}`` with the machine's CPU and vector extensions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import describe, machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
CASES = [("Rooms-3", "MetaRooms-3-v0", 200), ("PRN", "MetaPointRobot-v0", 300)]
SNIPPET = """
import json, sys
import torch
from benchmarks.run import PAPER, QUICK, build, time_updates
env_id, prefix, mode, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
kwargs = {"env_kwargs": {"sub_episode_length": 10}, "quick": True} if quick else {}
model = build(env_id, "mamba", QUICK if quick else PAPER, "cpu", **kwargs)
result = time_updates(model, (mode,), prefix, 2 if quick else 4, warmup=1 if quick else 2)[mode]
print(json.dumps(result))
"""


def run(checkout: Path, env_id: str, prefix: int, mode: str, quick: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET, env_id, str(prefix), mode, "1" if quick else "0"],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the earlier commit")
    parser.add_argument("--mode-before", default="native", help="its mode name in benchmarks.run")
    parser.add_argument("--mode-after", default="native", help="this checkout's mode name")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine_info()
    print(f"# {describe(info)}", flush=True)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    cases = [("Rooms-3 (quick)", "MetaRooms-3-v0", 20)] if args.quick else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), rev], cwd=ROOT, check=True)
        try:
            for name, env_id, prefix in cases:
                times: dict[str, list[float]] = {"before": [], "after": []}
                for _ in range(args.rounds):
                    for side, checkout, mode in (
                        ("before", before, args.mode_before),
                        ("after", ROOT, args.mode_after),
                    ):
                        result = run(checkout, env_id, prefix, mode, args.quick)
                        times[side].append(result["s_per_update"])
                        print(f"{name} H'={prefix} {side}: {result['s_per_update']:.3f} s/update", flush=True)
                medians = {side: statistics.median(values) for side, values in times.items()}
                rows.append(
                    {"case": name, "H_prime": prefix, **{f"{k}_s": v for k, v in medians.items()}, "runs": times}
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    lines = [
        f"# Before ({rev}, mode {args.mode_before}) and after (this checkout, mode {args.mode_after}), "
        f"same machine: {describe(info)}",
        "",
        "| case | H' | before s/update | after s/update | after / before | runs (before; after) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = "; ".join(", ".join(f"{v:.3f}" for v in r["runs"][side]) for side in ("before", "after"))
        lines.append(
            f"| {r['case']} | {r['H_prime']} | {r['before_s']:.3f} | {r['after_s']:.3f} | "
            f"{r['after_s'] / r['before_s']:.2f} | {runs} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{rev}_quick" if args.quick else rev
    (args.out_dir / f"before_after_{tag}.md").write_text(text)
    (args.out_dir / f"before_after_{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
