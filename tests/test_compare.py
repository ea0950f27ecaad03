"""The comparison command: zoo learning curves, per-sub-episode plot and markdown table from zoo run folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rl_zoo3")
pytest.importorskip("seaborn")

from tests.test_zoo import debug_conf


def test_compare_reads_zoo_runs_and_writes_plots_and_table(tmp_path):
    logs = tmp_path / "logs"
    for algo in ("mamba", "ppo_lstm"):
        for seed in (0, 1):
            cmd = [
                sys.executable,
                "-m",
                "sb3_mamba.zoo",
                "train",
                "--algo",
                algo,
                "--env",
                "MetaRooms-1-v0",
                "-f",
                str(logs),
                "-n",
                "800",
                "--eval-freq",
                "200",
                "--eval-episodes",
                "2",
                "--seed",
                str(seed),
                *debug_conf(algo),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "rooms1"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sb3_mamba.compare",
            "--env",
            "MetaRooms-1-v0",
            "-f",
            str(logs),
            "-o",
            str(out),
            "--algos",
            "mamba",
            "ppo_lstm",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results" / "rooms1.md").read_text()
    assert "| mamba |" in table and "| ppo_lstm |" in table and "| 2 |" in table  # two seeds each
    for suffix in ("_learning_curves.png", "_sub_episodes.png", "_zoo_scores.png"):
        path = tmp_path / "results" / f"rooms1{suffix}"
        assert path.is_file() and path.stat().st_size > 5000, suffix


def test_sub_episode_curves_parse_monitor_files(tmp_path):
    from sb3_mamba.compare import sub_episode_curves

    run = tmp_path / "run_1"
    run.mkdir()
    (run / "0.monitor.csv").write_text(
        '#{"t_start": 0, "env_id": "MetaRooms-1-v0"}\n'
        "r,l,t,sub_episode_returns\n"
        '-20.0,200,0.5,"[-10.0, -10.0]"\n'
        '30.5,200,1.0,"[10.0, 20.5]"\n'
    )
    ((steps, returns),) = sub_episode_curves([run])
    assert steps.tolist() == [200.0, 400.0]
    assert returns.tolist() == [[-10.0, -10.0], [10.0, 20.5]]


ENV_ID = "MetaRooms-1-v0"


def fake_run(log_dir, algo, number, seed, n_envs=2, episodes=12, evals=3, eval_episodes=2, length=200):
    """A zoo run folder as rl_zoo3 leaves it (args.yml, one monitor file per env, evaluations.npz), without training."""
    from collections import OrderedDict

    import numpy as np
    import yaml

    run = log_dir / algo / f"{ENV_ID}_{number}"
    (run / ENV_ID).mkdir(parents=True)
    (run / ENV_ID / "args.yml").write_text(yaml.dump(OrderedDict([("algo", algo), ("seed", seed)])))
    rng = np.random.default_rng(seed)
    for env in range(n_envs):
        rows = [f'#{{"t_start": 0, "env_id": "{ENV_ID}"}}', "r,l,t,sub_episode_returns"]
        for episode in range(episodes):
            sub = [float(episode + rng.normal()), float(2 * episode + rng.normal())]  # learning: returns grow
            rows.append(f'{sum(sub)},{length},{episode},"{sub}"')
        (run / f"{env}.monitor.csv").write_text("\n".join(rows) + "\n")
    np.savez(
        run / "evaluations.npz",
        timesteps=np.arange(1, evals + 1) * 1000,
        results=rng.normal(size=(evals, eval_episodes)),
        ep_lengths=np.full((evals, eval_episodes), length),
    )
    return run


def test_sub_episode_steps_are_total_env_steps_like_the_learning_curves(tmp_path):
    from sb3_mamba.compare import X_LABEL, learning_curve_figure, sub_episode_curves, sub_episode_figure

    run = fake_run(tmp_path, "mamba", 1, seed=0, n_envs=2, episodes=2)
    ((steps, returns),) = sub_episode_curves([run])
    # each of the 2 envs finished meta-episodes after 200 and 400 of its own steps: 400 and 800 in all
    assert steps.tolist() == [400.0, 400.0, 800.0, 800.0]
    assert returns.shape == (4, 2)
    curves = sub_episode_figure({"mamba": [(steps, returns)]}, ENV_ID)
    learning = learning_curve_figure({"mamba": [run]}, ENV_ID)
    assert {ax.get_xlabel() for ax in curves.axes} == {X_LABEL} == {learning.axes[0].get_xlabel()}
    assert "all envs" in X_LABEL


def test_smoothing_window_adapts_to_the_number_of_episodes(tmp_path):
    import numpy as np

    from sb3_mamba.compare import smooth, smoothing_window, sub_episode_curves, sub_episode_figure

    for n in range(1, 200):
        assert 1 <= smoothing_window(n, 20) <= max(1, n // 4) and smoothing_window(n, 20) <= n
    assert smoothing_window(1000, 20) == 20
    steps, values = np.arange(40.0), np.arange(40.0)
    x, y = smooth(steps, values, 20)
    assert len(y) == 31 and np.allclose(y, x - 4.5)  # width 10, each point at its window's last step
    x, y = smooth(np.array([400.0, 400.0, 800.0, 800.0]), np.array([1.0, 3.0, 5.0, 9.0]), 20)
    assert x.tolist() == [400.0, 800.0] and y.tolist() == [2.0, 7.0]  # episodes ending together: averaged
    # 3 meta-episodes per env: the old full-width window left one point, drawn as a flat line
    run = fake_run(tmp_path, "mamba", 1, seed=0, n_envs=1, episodes=3)
    fig = sub_episode_figure({"mamba": sub_episode_curves([run])}, ENV_ID)
    for ax in fig.axes:
        line = ax.get_lines()[0].get_ydata()
        assert len(line) > 1 and line[-1] > line[0]  # the returns grow: so does the curve


def test_train_refuses_to_count_earlier_runs_as_seeds(tmp_path, monkeypatch, capsys):
    from sb3_mamba import compare

    logs = tmp_path / "logs"
    fake_run(logs, "mamba", 1, seed=0)
    calls = []
    monkeypatch.setattr(
        compare.subprocess,
        "run",
        lambda cmd, **kwargs: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, stderr=""),
    )
    argv = [
        "--env",
        ENV_ID,
        "-f",
        str(logs),
        "-o",
        str(tmp_path / "out" / "c"),
        "--algos",
        "mamba",
        "ppo_lstm",
        "--train",
        "--seeds",
        "2",
    ]
    with pytest.raises(SystemExit) as error:
        compare.main(argv)
    assert error.value.code == 2 and calls == []
    message = capsys.readouterr().err
    assert f"already holds runs of {ENV_ID} (mamba: {ENV_ID}_1)" in message and "--append" in message

    compare.main([*argv, "--append"])  # keeps the run; the new ones get seeds it did not use
    trained = [(cmd[cmd.index("--algo") + 1], cmd[cmd.index("--seed") + 1]) for cmd in calls if "train" in cmd]
    assert trained == [("mamba", "1"), ("mamba", "2"), ("ppo_lstm", "0"), ("ppo_lstm", "1")]


def test_a_figure_rl_zoo3_did_not_write_is_reported_not_claimed(tmp_path, monkeypatch, capsys):
    from sb3_mamba import compare

    logs, out = tmp_path / "logs", tmp_path / "out" / "c"
    fake_run(logs, "mamba", 1, seed=0)  # one seed: rl_zoo3's plot_from_file fails on it
    out.parent.mkdir()
    (out.parent / "c_zoo_scores.png").write_bytes(b"stale")  # an earlier call's file must not count
    compare.main(["--env", ENV_ID, "-f", str(logs), "-o", str(out), "--algos", "mamba"])
    captured = capsys.readouterr()
    wrote = [line for line in captured.out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and "c_learning_curves.png" in wrote[0] and "c_zoo.pkl" in wrote[0]
    assert "c_zoo_scores.png" not in wrote[0] and not (out.parent / "c_zoo_scores.png").exists()
    assert "not written: rl_zoo3's plot_from_file did not write" in captured.err
    assert "exit code 1" in captured.err

    # exit code 0 without the file is a failure too
    monkeypatch.setattr(compare.subprocess, "run", lambda cmd, **kwargs: subprocess.CompletedProcess(cmd, 0, stderr=""))
    written, failures = compare.zoo_plots(logs, ["mamba"], ENV_ID, out)
    assert written == [] and failures == [
        f"rl_zoo3's all_plots did not write {out.parent / 'c_zoo.pkl'} (exit code 0: no error output)"
    ]


def test_bands_are_bootstrap_cis_of_the_mean_and_the_figures_say_so(tmp_path):
    import warnings

    import numpy as np
    from rliable import library as rly

    from sb3_mamba.compare import learning_curve_figure, mean_and_ci, sub_episode_curves, sub_episode_figure

    scores = np.random.default_rng(0).normal(size=(5, 7))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mean, low, high = mean_and_ci(scores, reps=500, seed=3)
    assert (np.random.get_state()[1] == before).all()  # the global generator it seeds is put back
    np.random.seed(3)  # (rliable resamples with NumPy's global generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        points, intervals = rly.get_interval_estimates(
            {"a": scores[:, None, :]}, lambda x: x.mean(axis=(0, 1)), reps=500, random_state=np.random.RandomState(3)
        )
    assert np.allclose(mean, scores.mean(0)) and np.allclose(mean, points["a"])
    assert np.allclose(low, intervals["a"][0]) and np.allclose(high, intervals["a"][1])
    assert (low <= mean).all() and (mean <= high).all() and (low < high).all()
    assert ((high - low) < scores.max(0) - scores.min(0)).all()  # narrower than the spread of the runs
    one = mean_and_ci(scores[:1])
    assert np.allclose(one[0], one[1]) and np.allclose(one[0], one[2])  # one seed: no interval

    runs = [fake_run(tmp_path, "mamba", i + 1, seed=i) for i in range(2)]
    for fig in (
        learning_curve_figure({"mamba": runs}, ENV_ID),
        sub_episode_figure({"mamba": sub_episode_curves(runs)}, ENV_ID),
    ):
        title = fig.axes[0].get_title() + (fig._suptitle.get_text() if fig._suptitle else "")
        assert "mean over seeds" in title and "95% bootstrap CI" in title
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["mamba (2 seeds)"]
