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
std and 95% bootstrap CI over seeds, and env steps).

Both figures count total env steps (all envs of a run together, as SB3's ``num_timesteps``), show
the mean over seeds and, as the band, its 95% confidence interval from rliable's stratified
bootstrap (``get_interval_estimates``, percentile method).

``--train`` refuses to start when the log folder already holds runs of an algorithm on the env
(they would be read as extra seeds): pass ``--append`` to keep them and add ``--seeds`` new runs,
or use another ``-f`` folder.
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
    """Per run: (total env steps at each finished meta-episode, (episodes, K) sub-episode returns).

    Read from the run's monitor files, one per training env (the zoo gives eval envs none). The envs
    of a VecEnv step in lockstep, so when an env has taken ``s`` steps the run has taken
    ``s * n_envs``: the unit of ``evaluations.npz`` (SB3's ``num_timesteps``) and the learning curves.
    """
    curves = []
    for run in runs:
        steps, returns = [], []
        monitors = sorted(run.glob("*.monitor.csv"))
        for monitor in monitors:
            lines = monitor.read_text().splitlines()[1:]  # line 0 is the Monitor's JSON header
            total = 0
            for row in csv.DictReader(lines):
                if row.get("sub_episode_returns") is None:
                    break  # written without our monitor_kwargs
                total += int(float(row["l"]))  # env steps of this env so far
                steps.append(float(total * len(monitors)))
                returns.append(ast.literal_eval(row["sub_episode_returns"]))
        if returns:
            order = np.argsort(steps, kind="stable")
            curves.append((np.asarray(steps)[order], np.asarray(returns, dtype=float)[order]))
    return curves


#: what the band of both figures is, for their titles and the docs
BAND = "mean over seeds, band: 95% bootstrap CI"
X_LABEL = "env steps (all envs of a run)"


def smoothing_window(n_points: int, window: int) -> int:
    """Moving-average width for a curve of ``n_points``: ``window``, but at most a quarter of the points.

    A window as wide as the data leaves one averaged point (a flat line); a quarter keeps at least
    three quarters of the points, and curves with fewer than 8 points are left unsmoothed.
    """
    return max(1, min(window, n_points // 4))


def smooth(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average of ``values`` (width: :func:`smoothing_window`), at each window's last step.

    Values at the same step (the envs of a run finish their meta-episodes together) are averaged
    first: one point per step, and the curve's x values increase strictly, as interpolation needs.
    """
    steps, inverse = np.unique(np.asarray(steps, dtype=float), return_inverse=True)
    values = np.bincount(inverse, weights=values) / np.bincount(inverse)
    width = smoothing_window(len(values), window)
    averaged = np.convolve(values, np.ones(width) / width, mode="valid")
    return steps[width - 1 :], averaged


def mean_and_ci(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of ``scores`` (runs, points) and its 95% CI per point, as rliable computes it.

    rliable's ``get_interval_estimates`` (stratified bootstrap over runs, percentile intervals) with
    the mean as the aggregate; one run gives a zero-width interval. Returns (mean, low, high).
    """
    import warnings

    from rliable import library as rly

    scores = np.asarray(scores, dtype=float)
    # rliable's StratifiedBootstrap draws its resamples from NumPy's global generator (its random_state
    # does not reach them): seed that for a reproducible figure and put the caller's state back
    global_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch: "random_state is deprecated" (rliable passes it on)
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                {"runs": scores[:, None, :]},
                lambda x: x.mean(axis=(0, 1)),
                reps=reps,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(global_state)
    return points["runs"], intervals["runs"][0], intervals["runs"][1]


def sub_episode_figure(curves_by_algo: dict[str, list], env_id: str, window: int = 20):
    """The per-sub-episode figure (one panel per sub-episode), or None without sub-episode returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_sub = max((c[1].shape[1] for curves in curves_by_algo.values() for c in curves), default=0)
    if num_sub == 0:
        return None
    fig, axes = plt.subplots(1, num_sub, figsize=(4.5 * num_sub, 3.8), sharey=True, squeeze=False)
    for algo, curves in curves_by_algo.items():
        if not curves:
            continue
        for k in range(num_sub):
            # smooth each run, then average the runs on a common grid of env steps (where all have data)
            smoothed = [smooth(steps, returns[:, k], window) for steps, returns in curves]
            start, end = max(x[0] for x, _ in smoothed), min(x[-1] for x, _ in smoothed)
            grid = np.linspace(start, end, 50) if end > start else np.array([end])
            mean, low, high = mean_and_ci(np.stack([np.interp(grid, x, y) for x, y in smoothed]))
            (line,) = axes[0, k].plot(
                grid, mean, marker="o" if len(grid) == 1 else None, label=f"{algo} ({len(curves)} seeds)"
            )
            axes[0, k].fill_between(grid, low, high, alpha=0.2, color=line.get_color())
    for k in range(num_sub):
        axes[0, k].set_title(f"sub-episode {k + 1}")
        axes[0, k].set_xlabel(X_LABEL)
    axes[0, 0].set_ylabel("training return (smoothed)")
    axes[0, 0].legend()
    fig.suptitle(f"{env_id}: {BAND}")
    fig.tight_layout()
    return fig


def plot_sub_episodes(curves_by_algo: dict[str, list], env_id: str, path: Path, window: int = 20) -> None:
    import matplotlib.pyplot as plt

    fig = sub_episode_figure(curves_by_algo, env_id, window)
    if fig is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)


def markdown_table(env_id: str, results: dict[str, tuple[list[float], list[int]]]) -> str:
    lines = [
        f"# {env_id}",
        "",
        "| algorithm | final return (mean +- std) | 95% bootstrap CI of the mean | seeds | env steps |",
        "|---|---|---|---|---|",
    ]
    for algo, (returns, steps) in results.items():
        if returns:
            _, low, high = mean_and_ci(np.asarray(returns, dtype=float)[:, None])
            lines.append(
                f"| {algo} | {np.mean(returns):.1f} +- {np.std(returns):.1f} | "
                f"[{low[0]:.1f}, {high[0]:.1f}] | {len(returns)} | {int(np.mean(steps)):,} |"
            )
        else:
            lines.append(f"| {algo} | no evaluations found | - | 0 | - |")
    return "\n".join(lines) + "\n"


def zoo_plots(log_dir: Path, algos: list[str], env_id: str, out: Path) -> tuple[list[Path], list[str]]:
    """rl_zoo3's own comparison: all_plots (its table and a .pkl) then plot_from_file (its score figure).

    Returns (files written, failures): a step counts as done when its process exits with 0 *and*
    its file exists; otherwise the failure names the step, its return code and its last stderr line.
    """
    env = {**os.environ, "MPLBACKEND": "Agg"}
    pkl, figure = out.parent / f"{out.name}_zoo.pkl", out.parent / f"{out.name}_zoo_scores.png"
    for path in (pkl, figure):
        if path.exists():
            path.unlink()  # a file left by an earlier call must not pass for this one's
    if not algos:
        return [], [f"rl_zoo3's plots: no runs of {env_id} in {log_dir}"]
    steps = [
        (
            "all_plots",
            [
                "all_plots",
                "-a",
                *algos,
                "-e",
                env_id,
                "-f",
                str(log_dir),
                "-o",
                str(pkl.with_suffix("")),
                "--no-display",
                "-max",
                str(10**9),
            ],
            pkl,
        ),
        ("plot_from_file", ["plot_from_file", "-i", str(pkl), "-o", str(figure), "--format", "png"], figure),
    ]
    written, failures = [], []
    for name, args, path in steps:
        # (stdout, rl_zoo3's tables, goes to ours; stderr is kept for the failure message)
        done = subprocess.run([sys.executable, "-m", "rl_zoo3.cli", *args], env=env, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0 and path.is_file():
            written.append(path)
            continue
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        failures.append(f"rl_zoo3's {name} did not write {path} (exit code {done.returncode}: {last})")
        break  # plot_from_file reads all_plots' file
    return written, failures


def learning_curve_figure(runs_by_algo: dict[str, list[Path]], env_id: str):
    """Evaluation return over total env steps: mean over seeds with its 95% bootstrap CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for algo, runs in runs_by_algo.items():
        curves = [np.load(r / "evaluations.npz") for r in runs if (r / "evaluations.npz").is_file()]
        curves = [c for c in curves if len(c["timesteps"])]
        if not curves:
            continue
        length = min(len(c["timesteps"]) for c in curves)  # runs cut to the shortest
        steps = curves[0]["timesteps"][:length]
        mean, low, high = mean_and_ci(np.stack([c["results"][:length].mean(axis=1) for c in curves]))
        (line,) = ax.plot(steps, mean, marker="o" if length == 1 else None, label=f"{algo} ({len(curves)} seeds)")
        ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
    ax.set_title(f"{env_id}: {BAND}", fontsize=10)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("evaluation return")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_learning_curves(runs_by_algo: dict[str, list[Path]], env_id: str, path: Path) -> None:
    """:func:`learning_curve_figure` saved to ``path`` (rl_zoo3's all_plots shows only its own version)."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(runs_by_algo, env_id)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def earlier_runs(log_dir: Path, algos: list[str], env_id: str) -> dict[str, list[Path]]:
    """Run folders already in ``log_dir`` of each algorithm on ``env_id`` (algorithms with none left out)."""
    found = {algo: run_folders(log_dir, algo, env_id) for algo in algos}
    return {algo: runs for algo, runs in found.items() if runs}


def run_seed(run: Path) -> int | None:
    """The ``--seed`` a zoo run was trained with (from its ``<env>/args.yml``), or None if unreadable."""
    import yaml

    class Loader(yaml.SafeLoader):  # rl_zoo3 dumps an OrderedDict: read it as a dict, construct nothing else
        pass

    def ordered_dict(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> dict:
        return dict(loader.construct_sequence(node, deep=True)[0])

    Loader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", ordered_dict)
    for path in run.glob("*/args.yml"):
        try:
            seed = yaml.load(path.read_text(), Loader=Loader).get("seed")
        except (yaml.YAMLError, AttributeError, IndexError, TypeError, ValueError):
            continue
        if isinstance(seed, int):
            return seed
    return None


def new_seeds(earlier: list[Path], count: int) -> list[int]:
    """``count`` seeds for new runs: the smallest ones no earlier run was trained with (0.. without any)."""
    used = {run_seed(run) for run in earlier}
    seeds: list[int] = []
    seed = 0
    while len(seeds) < count:
        if seed not in used:
            seeds.append(seed)
        seed += 1
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument("--algos", nargs="+", default=["mamba", "dreamer_tune", "ppo_lstm"])
    parser.add_argument("-f", "--log-folder", default="logs")
    parser.add_argument("-o", "--output", default="results/compare", help="output prefix")
    parser.add_argument("--train", action="store_true", help="train the runs first with the zoo CLI")
    parser.add_argument(
        "--append",
        action="store_true",
        help="with --train: keep runs already in the log folder and count them as seeds "
        "too; the new runs take seeds no earlier run used (without it, --train refuses "
        "to start when there are earlier runs)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("-n", "--n-timesteps", type=int, default=None)
    parser.add_argument("--eval-freq", type=int, default=10000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("-params", "--hyperparams", nargs="*", default=[], help="passed to every zoo run")
    parser.add_argument(
        "--conf-dir",
        default=None,
        help="folder of <algo>.yml files for --train (default: sb3_mamba/hyperparams/; "
        "sb3_mamba/hyperparams/debug for smoke runs)",
    )
    args = parser.parse_args(argv)
    log_dir, out = Path(args.log_folder), Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    found = earlier_runs(log_dir, args.algos, args.env) if args.train else {}
    if found and not args.append:
        listing = "; ".join(f"{algo}: {', '.join(r.name for r in runs)}" for algo, runs in found.items())
        parser.error(
            f"{log_dir} already holds runs of {args.env} ({listing}), which would be counted as "
            f"extra seeds next to the new ones. Pass --append to keep them and add {args.seeds} runs "
            "per algorithm (with seeds they did not use), or choose another -f folder."
        )

    if args.train:
        for algo in args.algos:
            for seed in new_seeds(found.get(algo, []), args.seeds):
                cmd = [
                    sys.executable,
                    "-m",
                    "sb3_mamba.zoo",
                    "train",
                    "--algo",
                    algo,
                    "--env",
                    args.env,
                    "-f",
                    str(log_dir),
                    "--seed",
                    str(seed),
                    "--eval-freq",
                    str(args.eval_freq),
                    "--eval-episodes",
                    str(args.eval_episodes),
                ]
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
    outputs = [Path(f"{out}.md"), Path(f"{out}_learning_curves.png"), Path(f"{out}_sub_episodes.png")]
    for path in outputs[1:]:
        if path.exists():
            path.unlink()  # left from an earlier call: "wrote" below only for files of this one
    plot_sub_episodes({algo: sub_episode_curves(r) for algo, r in runs.items()}, args.env, outputs[2])
    plot_learning_curves(runs, args.env, outputs[1])
    written = [path for path in outputs if path.is_file()]
    failures = [] if outputs[2].is_file() else [f"{outputs[2]}: no sub_episode_returns in the monitor files"]
    zoo_written, zoo_failures = zoo_plots(log_dir, [a for a in args.algos if runs[a]], args.env, out)
    print("wrote " + ", ".join(str(p) for p in written + zoo_written))
    for failure in failures + zoo_failures:
        # rl_zoo3's plot_from_file fails on some small inputs (e.g. one seed): the files above still stand
        print(f"not written: {failure}", file=sys.stderr)


if __name__ == "__main__":
    main()
