#!/usr/bin/env bash
# Trains the paper's reference MAMBA (../shared/refbench/code, a measuring stick: run it, never copy
# from it) on one of its env blocks at its own settings, and summarises its evaluations.
#
#   bash benchmarks/reference_run.sh halfcircle                 # PRN, the full budget (its "2e6" = 1M real steps)
#   bash benchmarks/reference_run.sh halfcircle --steps 200000  # any extra dreamer.py flag is passed on
#   bash benchmarks/reference_run.sh --summary DIR              # the table of a run in progress or killed
#   TASK=rooms_3 bash benchmarks/reference_run.sh rooms ...     # a task other than <block>_meta
#
# Writes into $OUT (default /tmp/reference_<block>): out.log, wandb.jsonl (its metrics through the
# refbench wandb shim) and timing.jsonl. The virtualenv is the one ../shared/refbench/run.sh builds
# (REF_VENV, default ~/.cache/refvenv); the point-robot envs also need OpenCV in it:
#   $REF_VENV/bin/pip install "opencv-python-headless<4.9"
# The run cannot resume: it is for measuring, on a machine that can give it the whole budget
# (PRN: ~3,300 updates, about 3 s each on 2 CPU cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
refbench="$(cd "$here/../../shared/refbench" 2>/dev/null && pwd)"
venv="${REF_VENV:-$HOME/.cache/refvenv}"

summary() {
  "$venv/bin/python" - "$1/wandb.jsonl" "$1/timing.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
updates = sum(1 for line in open(sys.argv[2]) if '"upd"' in line)
print(f"| evaluation | updates before it | eval return (20 tasks, sum) | per sub-episode | "
      "reward loss | imagined reward mean / max | rewarded fraction of batches |")
print("|---|---|---|---|---|---|---|")
last, index, done = {}, 0, 0
for row in rows:
    if "upd" in row:
        continue
    last.update({k: v for k, v in row.items() if k in ("reward_loss", "imag_reward_mean", "imag_reward_max",
                                                         "batch_rewards_positive", "update_count")})
    if "eval_return/sum" in row:
        index += 1
        per = " / ".join(f"{row.get(f'eval_return/episode{k}', float('nan')):.1f}" for k in range(3))
        print(f"| {index} | {int(last.get('update_count', 0))} | {row['eval_return/sum']:.2f} | {per} | "
              f"{last.get('reward_loss', float('nan')):.3f} | {last.get('imag_reward_mean', float('nan')):.4f} / "
              f"{last.get('imag_reward_max', float('nan')):.4f} | {last.get('batch_rewards_positive', float('nan')):.4f} |")
print(f"\n{updates} updates so far.")
PY
}

if [ "${1:-}" = "--summary" ]; then summary "$2"; exit 0; fi
block="${1:?usage: reference_run.sh BLOCK [dreamer.py flags...] | --summary DIR}"; shift
out="${OUT:-/tmp/reference_$block}"
mkdir -p "$out"
work="$(mktemp -d)"; cp -r "$refbench/code/." "$work/"; chmod -R u+w "$work"
cd "$work"
PYTHONPATH="$refbench/shim" WANDB_SHIM_LOG="$out/wandb.jsonl" REF_TIMING_LOG="$out/timing.jsonl" \
  "$venv/bin/python" dreamer.py --configs "$block" --task "${TASK:-${block}_meta}" --device "${DEVICE:-cpu}" \
  --compile False --log_every 3000 --logdir "$out/logs" "$@" > "$out/out.log" 2>&1
summary "$out"
