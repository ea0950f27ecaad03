"""MAMBA vs RL^2 (and Dreamer-Tune) on Rooms-3, side by side: train with the zoo, then plot and tabulate.

    python examples/compare_mamba_rl2.py --debug            # seconds: tiny models, tiny budget
    python examples/compare_mamba_rl2.py --steps 200000     # real settings (hours on a CPU; use a GPU)

Results: results/rooms3.md, results/rooms3_learning_curves.png, results/rooms3_sub_episodes.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sb3_mamba import compare

HYPERPARAMS = Path(__file__).resolve().parents[1] / "sb3_mamba" / "hyperparams"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="tiny models and budget (sb3_mamba/hyperparams/debug)")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=["mamba", "dreamer_tune", "ppo_lstm"])
    parser.add_argument("--logs", default="logs")
    parser.add_argument("--out", default="results/rooms3")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep runs already in --logs as extra seeds (without it a second call refuses)",
    )
    args = parser.parse_args()
    steps = 800 if args.debug else args.steps
    argv = [
        "--env",
        "MetaRooms-3-v0",
        "-f",
        args.logs,
        "-o",
        args.out,
        "--algos",
        *args.algos,
        "--train",
        "--seeds",
        str(args.seeds),
        "-n",
        str(steps),
        "--eval-freq",
        str(max(steps // 4, 200)),
        "--eval-episodes",
        "2" if args.debug else "20",
    ]
    if args.debug:
        argv += ["--conf-dir", str(HYPERPARAMS / "debug")]
    if args.append:
        argv.append("--append")
    compare.main(argv)


if __name__ == "__main__":
    main()
