"""Compare MAMBA, the Dreamer presets and RL^2 on one env from rl_zoo3 run folders.

    python -m sb3_mamba.compare --env MetaRooms-3-v0 -f logs/ -o results/rooms3 \\
        --algos mamba dreamer_tune ppo_lstm                      # read runs already in logs/
    python -m sb3_mamba.compare --env MetaRooms-3-v0 -f logs/ -o results/rooms3 \\
        --train --seeds 3 -n 50000 --eval-freq 5000             # train them first (zoo CLI)

Writes ``<out>_learning_curves.png`` (evaluation return over env steps, from the
runs' ``evaluations.npz``), rl_zoo3's own ``all_plots`` table/``.pkl`` and
``plot_from_file`` figure (``<out>_zoo_scores.png``), ``<out>_sub_episodes.png`` (return of each sub-episode
over training, from the ``sub_episode_returns`` column our YAMLs make the zoo's
Monitor write; paper Fig. 4) and ``<out>.md`` (final evaluation return, mean +-
std over seeds, and env steps).
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def run_folders(log_dir: Path, algo: str, env_id: str) -> list[Path]:
    """rl_zoo3 run folders ``<log_dir>/<algo>/<env_id>_<n>`` (exact env match, unlike the zoo's substring)."""
    folder = log_dir / algo
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and p.name.rsplit("_", 1)[0] == env_id]
    return sorted(runs, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def final_evaluations(runs: list[Path]) -> tuple[list[float], list[int]]:
    """Mean return of the last evaluation, and its env steps, per run."""
    returns, steps = [], []
    for run in runs:
        path = run / "evaluations.npz"
        if path.is_file():
            data = np.load(path)
            if len(data["timesteps"]):
                returns.append(float(data["results"][-1].mean()))
                steps.append(int(data["timesteps"][-1]))
    return returns, steps


def sub_episode_curves(runs: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per run: (env steps at each finished meta-episode, (episodes, K) sub-episode returns) from monitor files."""
    curves = []
    for run in runs:
        steps, returns = [], []
        for monitor in sorted(run.glob("*.monitor.csv")):
            lines = monitor.read_text().splitlines()[1:]  # line 0 is the Monitor's JSON header
            total = 0
            for row in csv.DictReader(lines):
                if row.get("sub_episode_returns") is None:
                    break  # written without our monitor_kwargs
                total += int(float(row["l"]))  # env steps of this env so far
                steps.append(float(total))
                returns.append(ast.literal_eval(row["sub_episode_returns"]))
        if returns:
            order = np.argsort(steps, kind="stable")
            curves.append((np.asarray(steps)[order], np.asarray(returns, dtype=float)[order]))
    return curves


def plot_sub_episodes(curves_by_algo: dict[str, list], env_id: str, path: Path, window: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_sub = max((c[1].shape[1] for curves in curves_by_algo.values() for c in curves), default=0)
    if num_sub == 0:
        return
    fig, axes = plt.subplots(1, num_sub, figsize=(4.5 * num_sub, 3.6), sharey=True, squeeze=False)
    for algo, curves in curves_by_algo.items():
        for k in range(num_sub):
            # smooth each run, then average the runs on a common grid of env steps
            grid_end = min(c[0][-1] for c in curves) if curves else 0
            if grid_end <= 0:
                continue
            grid = np.linspace(0, grid_end, 50)
            smoothed = []
            for steps, returns in curves:
                kernel = np.ones(min(window, len(returns))) / min(window, len(returns))
                smooth = np.convolve(returns[:, k], kernel, mode="valid")
                smoothed.append(np.interp(grid, steps[len(steps) - len(smooth):], smooth))
            mean, std = np.mean(smoothed, 0), np.std(smoothed, 0)
            axes[0, k].plot(grid, mean, label=algo)
            axes[0, k].fill_between(grid, mean - std, mean + std, alpha=0.2)
            axes[0, k].set_title(f"{env_id}: sub-episode {k + 1}")
            axes[0, k].set_xlabel("env steps")
    axes[0, 0].set_ylabel("return")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(env_id: str, results: dict[str, tuple[list[float], list[int]]]) -> str:
    lines = [f"# {env_id}", "", "| algorithm | final return (mean +- std) | seeds | env steps |", "|---|---|---|---|"]
    for algo, (returns, steps) in results.items():
        if returns:
            lines.append(f"| {algo} | {np.mean(returns):.1f} +- {np.std(returns):.1f} | {len(returns)} | "
                         f"{int(np.mean(steps)):,} |")
        else:
            lines.append(f"| {algo} | no evaluations found | 0 | - |")
    return "\n".join(lines) + "\n"


def zoo_plots(log_dir: Path, algos: list[str], env_id: str, out: Path) -> None:
    """rl_zoo3's own comparison: all_plots (its table and a .pkl) then plot_from_file (its score figure)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    pkl = out.parent / f"{out.name}_zoo"
    subprocess.run([sys.executable, "-m", "rl_zoo3.cli", "all_plots", "-a", *algos, "-e", env_id, "-f", str(log_dir),
                    "-o", str(pkl), "--no-display", "-max", str(10**9)], check=True, env=env)
    subprocess.run([sys.executable, "-m", "rl_zoo3.cli", "plot_from_file", "-i", f"{pkl}.pkl", "-o",
                    str(out.parent / f"{out.name}_zoo_scores.png"), "--format", "png"], check=True, env=env)


def plot_learning_curves(runs_by_algo: dict[str, list[Path]], env_id: str, path: Path) -> None:
    """Evaluation return over env steps, mean +- std over seeds (rl_zoo3's all_plots only shows these)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for algo, runs in runs_by_algo.items():
        curves = [np.load(r / "evaluations.npz") for r in runs if (r / "evaluations.npz").is_file()]
        curves = [c for c in curves if len(c["timesteps"])]
        if not curves:
            continue
        length = min(len(c["timesteps"]) for c in curves)  # runs cut to the shortest
        steps = curves[0]["timesteps"][:length]
        returns = np.stack([c["results"][:length].mean(axis=1) for c in curves])
        mean, std = returns.mean(0), returns.std(0)
        ax.plot(steps, mean, label=f"{algo} ({len(curves)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_title(env_id)
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument("--algos", nargs="+", default=["mamba", "dreamer_tune", "ppo_lstm"])
    parser.add_argument("-f", "--log-folder", default="logs")
    parser.add_argument("-o", "--output", default="results/compare", help="output prefix")
    parser.add_argument("--train", action="store_true", help="train the runs first with the zoo CLI")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("-n", "--n-timesteps", type=int, default=None)
    parser.add_argument("--eval-freq", type=int, default=10000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("-params", "--hyperparams", nargs="*", default=[], help="passed to every zoo run")
    parser.add_argument("--conf-dir", default=None,
                        help="folder of <algo>.yml files for --train (default: sb3_mamba/hyperparams/; sb3_mamba/hyperparams/debug for smoke runs)")
    args = parser.parse_args(argv)
    log_dir, out = Path(args.log_folder), Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    if args.train:
        for algo in args.algos:
            for seed in range(args.seeds):
                cmd = [sys.executable, "-m", "sb3_mamba.zoo", "train", "--algo", algo, "--env", args.env, "-f",
                       str(log_dir), "--seed", str(seed), "--eval-freq", str(args.eval_freq), "--eval-episodes",
                       str(args.eval_episodes)]
                if args.n_timesteps:
                    cmd += ["-n", str(args.n_timesteps)]
                if args.conf_dir:
                    cmd += ["--conf-file", str(Path(args.conf_dir) / f"{algo}.yml")]
                if args.hyperparams:
                    cmd += ["-params", *args.hyperparams]
                subprocess.run(cmd, check=True)

    runs = {algo: run_folders(log_dir, algo, args.env) for algo in args.algos}
    results = {algo: final_evaluations(r) for algo, r in runs.items()}
    table = markdown_table(args.env, results)
    Path(f"{out}.md").write_text(table)
    print(table)
    plot_sub_episodes({algo: sub_episode_curves(r) for algo, r in runs.items()}, args.env,
                      Path(f"{out}_sub_episodes.png"))
    plot_learning_curves(runs, args.env, Path(f"{out}_learning_curves.png"))
    try:
        zoo_plots(log_dir, [a for a in args.algos if runs[a]], args.env, out)
    except subprocess.CalledProcessError as error:
        # rl_zoo3's plot_from_file fails on some small inputs (e.g. one seed): ours above still stand
        print(f"warning: rl_zoo3's plots failed ({error}); the plots and table above are complete", file=sys.stderr)
    print(f"wrote {out}.md, {out}_learning_curves.png, {out}_sub_episodes.png, {out}_zoo_scores.png")


if __name__ == "__main__":
    main()
