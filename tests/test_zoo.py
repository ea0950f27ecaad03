"""RL-Zoo integration: every YAML entry builds its model; the zoo CLI trains and replays our algorithms."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba.zoo import HYPERPARAMS_DIR, ZOO_ALGOS, _pop_option, _with_defaults
from sb3_mamba_envs import ENV_IDS
from tests.rendering import PIXEL_MUJOCO_IDS, can_render

pytest.importorskip("rl_zoo3")

ALGO_CLASSES = {**ZOO_ALGOS, "ppo_lstm": RecurrentPPO}
ZOO_ONLY_KEYS = (
    "n_timesteps",
    "n_envs",
    "policy",
    "normalize",
    "env_wrapper",
    "frame_stack",
    "callback",
    "monitor_kwargs",
)


def load(algo: str, debug: bool = False) -> dict:
    folder = HYPERPARAMS_DIR / "debug" if debug else HYPERPARAMS_DIR
    return yaml.safe_load((folder / f"{algo}.yml").read_text())


def debug_conf(algo: str) -> list[str]:
    return ["--conf-file", str(HYPERPARAMS_DIR / "debug" / f"{algo}.yml")]


@pytest.mark.parametrize("debug", [False, True], ids=["full", "debug"])
@pytest.mark.parametrize("algo", list(ALGO_CLASSES))
def test_every_registered_env_has_an_entry_that_builds(algo, debug):
    entries = load(algo, debug)
    assert set(ENV_IDS) <= set(entries), f"{algo}.yml misses {set(ENV_IDS) - set(entries)}"
    for env_id in ENV_IDS:
        if env_id in PIXEL_MUJOCO_IDS and not can_render():
            continue  # (making the env needs MuJoCo rendering; CI has it)
        hyperparams = dict(entries[env_id])
        policy = hyperparams["policy"]
        for key in ZOO_ONLY_KEYS:
            hyperparams.pop(key, None)
        if "policy_kwargs" in hyperparams:
            hyperparams["policy_kwargs"] = eval(hyperparams["policy_kwargs"])  # as rl_zoo3 does
        env = make_vec_env(env_id, n_envs=1)
        model = ALGO_CLASSES[algo](policy, env, **hyperparams)
        if algo in ZOO_ALGOS:
            horizon = env.get_attr("horizon")[0]
            assert model.meta_episode_length == horizon
        elif not debug:  # RL^2 rollouts cover whole meta-episodes
            assert model.n_steps % env.get_attr("horizon")[0] == 0
        env.close()


def test_train_ratio_unit_matches_the_reference():
    entries = load("mamba")
    # reference train_ratio / K
    assert entries["MetaRooms-3-v0"]["train_ratio"] == pytest.approx(0.1 / 2)
    assert entries["MetaPointRobot-v0"]["train_ratio"] == pytest.approx(0.01 / 3, rel=1e-3)
    assert entries["MetaReacher-2-v0"]["train_ratio"] == pytest.approx(0.03 / 3)
    assert load("dreamer_vanilla")["MetaRooms-3-v0"].get("imag_horizon") is None  # Table 2's 15


def test_cli_defaults():
    argv = _with_defaults(["--algo", "mamba", "--env", "MetaRooms-3-v0"])
    assert argv[argv.index("--gym-packages") + 1] == "sb3_mamba_envs"
    assert Path(argv[argv.index("--conf-file") + 1]) == HYPERPARAMS_DIR / "mamba.yml"
    explicit = _with_defaults(["--algo", "mamba", "--conf-file", "mine.yml"])
    assert explicit.count("--conf-file") == 1


def test_cli_commands_and_their_options(monkeypatch):
    from sb3_mamba import zoo

    with pytest.raises(SystemExit, match="record-video,plot-train,plot-from-file,all-plots"):
        zoo.main(["record_training"])
    argv = ["--algo", "mamba", "--gym-packages", "a", "b", "-n", "5"]
    assert _pop_option(argv, ("--gym-packages",), "+") == (["a", "b"], ["--algo", "mamba", "-n", "5"])
    assert _pop_option(["-o", "x.png", "-w", "1"], ("-o", "--output")) == (["x.png"], ["-w", "1"])
    assert _pop_option(["-w", "1"], ("-o", "--output")) == (None, ["-w", "1"])
    # without moviepy, record-video stops before loading anything and says what to install
    monkeypatch.setitem(sys.modules, "moviepy", None)
    with pytest.raises(SystemExit, match=r"moviepy, which is not installed: install it with: pip install"):
        zoo.main(["record-video", "--algo", "mamba", "--env", "MetaRooms-1-v0"])


def run_zoo(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sb3_mamba.zoo", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("algo", list(ALGO_CLASSES))
@pytest.mark.parametrize("env_id", ["MetaRooms-1-v0", "MetaEscapeRoom-v0"])
def test_zoo_cli_trains_and_leaves_the_run_folder(algo, env_id, tmp_path):
    steps = "480" if env_id == "MetaEscapeRoom-v0" else "800"
    run_zoo(
        [
            "train",
            "--algo",
            algo,
            "--env",
            env_id,
            "-f",
            str(tmp_path),
            "-n",
            steps,
            "--eval-freq",
            "240",
            "--eval-episodes",
            "2",
            "--seed",
            "0",
            *debug_conf(algo),
        ],
        tmp_path,
    )
    run_dir = tmp_path / algo / f"{env_id}_1"
    assert (run_dir / f"{env_id}.zip").is_file()
    assert (run_dir / env_id / "config.yml").is_file()
    evaluations = np.load(run_dir / "evaluations.npz")
    assert evaluations["results"].shape[0] >= 1 and np.isfinite(evaluations["results"]).all()
    if algo == "mamba" and env_id == "MetaRooms-1-v0":
        out = run_zoo(
            ["enjoy", "--algo", algo, "--env", env_id, "-f", str(tmp_path), "--no-render", "-n", "400"], tmp_path
        )
        assert "Mean reward" in out.stdout


def test_optuna_tuning_through_the_zoo_with_shared_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "train",
        "--algo",
        "mamba",
        "--env",
        "MetaRooms-1-v0",
        "-f",
        str(tmp_path),
        "-n",
        "300",
        "-optimize",
        "--n-trials",
        "2",
        "--n-jobs",
        "1",
        "--sampler",
        "random",
        "--seed",
        "0",
        "--storage",
        storage,
        "--study-name",
        "mamba-test",
        *debug_conf("mamba"),
    ]
    run_zoo(args, tmp_path)
    import optuna

    study = optuna.load_study(study_name="mamba-test", storage=storage)
    assert len(study.trials) == 2
    assert {"train_ratio", "imag_horizon", "dyn_deter"} <= set(study.trials[0].params)
    # a second "machine" adds trials to the same study
    run_zoo(args, tmp_path)
    assert len(optuna.load_study(study_name="mamba-test", storage=storage).trials) == 4


POSTGRES_URL = os.environ.get("SB3_MAMBA_TEST_POSTGRES_URL")


@pytest.mark.skipif(
    not POSTGRES_URL,
    reason="SB3_MAMBA_TEST_POSTGRES_URL is unset: no PostgreSQL server to "
    "tune against (.ci/run starts one; or export postgresql+psycopg://user:pass@host/db)",
)
def test_two_tuning_workers_at_once_fill_one_postgresql_study(tmp_path):
    """The README's multi-machine tuning: two zoo workers start together against one PostgreSQL study.

    Each test run gets a schema of its own (dropped at the end), so the workers always meet a database
    without Optuna's tables, where starting together used to fail.
    """
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'sb3-mamba[postgres]'")
    import optuna
    import sqlalchemy as sa

    schema = f"sb3_mamba_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    storage = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    storage = storage.render_as_string(hide_password=False)
    workers = []
    try:
        for worker, n_trials in enumerate((1, 2)):  # 1 + 2 trials: the study's 3 can only come from both
            folder = tmp_path / f"worker{worker}"
            folder.mkdir()
            args = [
                "train",
                "--algo",
                "mamba",
                "--env",
                "MetaRooms-1-v0",
                "-f",
                str(folder),
                "-n",
                "300",
                "-optimize",
                "--n-trials",
                str(n_trials),
                "--n-jobs",
                "1",
                "--sampler",
                "random",
                "--seed",
                str(worker),
                "--storage",
                storage,
                "--study-name",
                "mamba-test",
                *debug_conf("mamba"),
            ]
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "sb3_mamba.zoo", *args],
                    cwd=folder,
                    text=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        for process in workers:
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr[-3000:]

        study = optuna.load_study(study_name="mamba-test", storage=storage)
        assert len(study.trials) == 3 and sorted(t.number for t in study.trials) == [0, 1, 2]
        assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
        assert {"train_ratio", "imag_horizon", "dyn_deter"} <= set(study.trials[0].params)
        with admin.connect() as connection:  # the tables are in the test's schema, not elsewhere
            tables = connection.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :schema"),
                {"schema": schema},
            ).scalars()
            assert {"studies", "trials"} <= set(tables)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_storage_url_without_its_driver_says_what_to_install(monkeypatch):
    from sb3_mamba.zoo import prepare_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(SystemExit) as error:
        prepare_storage("postgresql+psycopg://user:secret@127.0.0.1:1/db")
    message = str(error.value)
    assert "pip install 'sb3-mamba[postgres]'" in message and "postgresql+psycopg://user:password@" in message
    assert "secret" not in message
    prepare_storage("study.log")  # a JournalStorage file: nothing to prepare


def test_zoo_continues_a_run_with_its_replay_buffer(tmp_path):
    """``--save-replay-buffer`` then ``-i run/ENV.zip``: weights, optimisers, buffer and H' schedule carry over."""
    from sb3_mamba import MAMBA

    env_id = "MetaRooms-1-v0"
    common = [
        "--algo",
        "mamba",
        "--env",
        env_id,
        "-f",
        str(tmp_path),
        "--seed",
        "0",
        "--eval-freq",
        "-1",
        *debug_conf("mamba"),
    ]
    run_zoo(["train", *common, "-n", "400", "--save-replay-buffer"], tmp_path)
    first_dir = tmp_path / "mamba" / f"{env_id}_1"
    assert (first_dir / "replay_buffer.pkl").is_file()
    first = MAMBA.load(first_dir / f"{env_id}.zip")
    out = run_zoo(["train", *common, "-n", "200", "-i", str(first_dir / f"{env_id}.zip")], tmp_path)
    assert "Loading replay buffer" in out.stdout
    second = MAMBA.load(tmp_path / "mamba" / f"{env_id}_2" / f"{env_id}.zip")
    assert second._lifetime_timesteps == first._lifetime_timesteps + 200  # the schedule keeps its position
    assert second._n_updates > first._n_updates


def test_record_video_and_plot_commands_on_a_tiny_run(tmp_path):
    """rl_zoo3's record_video and plot tools with our algorithms and env IDs (rl_zoo3's own know neither)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    env_id = "MetaRooms-1-v0"
    for seed in ("0", "1"):  # rl_zoo3's plot_from_file needs two runs (one leaves it nothing to plot)
        run_zoo(
            [
                "train",
                "--algo",
                "mamba",
                "--env",
                env_id,
                "-f",
                "logs",
                "-n",
                "400",
                "--eval-freq",
                "200",
                "--eval-episodes",
                "2",
                "--seed",
                seed,
                *debug_conf("mamba"),
            ],
            tmp_path,
        )

    out = run_zoo(
        ["record-video", "--algo", "mamba", "--env", env_id, "-f", "logs", "-n", "30", "-o", "videos"], tmp_path
    )
    video = tmp_path / "videos" / f"final-model-mamba-{env_id}-step-0-to-step-30.mp4"
    assert video.is_file(), out.stdout[-2000:]
    frames = imageio_ffmpeg.read_frames(str(video))
    meta = next(frames)
    assert min(meta["size"]) >= 256, meta["size"]  # large enough to see (Rooms: 260 x 260)
    assert sum(1 for _ in frames) == 31  # the reset frame and one per step

    run_zoo(["all-plots", "-a", "mamba", "-e", env_id, "-f", "logs", "--no-display", "-o", "plots/scores"], tmp_path)
    run_zoo(
        ["plot_from_file", "-i", "plots/scores.pkl", "-o", "plots/scores.png", "--format", "png"], tmp_path
    )  # (rl_zoo3.cli's underscored name works too)
    run_zoo(
        ["plot-train", "--algo", "mamba", "--env", env_id, "-f", "logs", "-w", "1", "-o", "plots/train.png"], tmp_path
    )
    for name in ("train.png", "scores.pkl", "scores.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0, name
    assert (tmp_path / "plots" / "train.png").stat().st_size > 5000  # a drawn figure, not an empty canvas
