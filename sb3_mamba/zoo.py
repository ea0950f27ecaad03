"""Run MAMBA and its Dreamer presets through RL-Zoo (``rl_zoo3``) next to the zoo's own algorithms.

rl_zoo3 has no plugin entry point for algorithms: ``rl_zoo3.utils.ALGOS`` is a
plain dict read when ``train``/``enjoy`` run. This module adds ``mamba``,
``dreamer_tune`` and ``dreamer_vanilla`` to it and then hands over to the zoo,
with two defaults the zoo lacks: our ``hyperparams/<algo>.yml`` as
``--conf-file`` and ``--gym-packages sb3_mamba_envs``.

    python -m sb3_mamba.zoo train --algo mamba --env MetaRooms-3-v0 -f logs/ --eval-freq 10000
    python -m sb3_mamba.zoo train --algo ppo_lstm --env MetaRooms-3-v0 -f logs/      # RL^2 baseline
    python -m sb3_mamba.zoo enjoy --algo mamba --env MetaRooms-3-v0 -f logs/ --no-render
    python -m sb3_mamba.zoo record-video --algo mamba --env MetaRooms-3-v0 -f logs/ -n 400 -o videos/
    python -m sb3_mamba.zoo plot-train --algo mamba --env MetaRooms-3-v0 -f logs/ -w 10 -o train.png
    python -m sb3_mamba.zoo all-plots -a mamba ppo_lstm -e MetaRooms-3-v0 -f logs/ --no-display -o scores
    python -m sb3_mamba.zoo plot-from-file -i scores.pkl -o scores.png --format png
    python -m sb3_mamba.zoo train --algo mamba --env MetaRooms-1-v0 -optimize --n-trials 50 \
        --storage sqlite:///mamba_rooms1.db --study-name mamba-rooms1    # tuning on one machine
    python -m sb3_mamba.zoo train ... -optimize --study-name mamba-rooms1 \
        --storage postgresql+psycopg://user:password@host:5432/optuna   # several machines ([postgres] extra)
    sb3-mamba-zoo train ...                                                          # same, console script

Everything else (flags, log folders, ``-params`` overrides, Optuna's
``--storage``) is rl_zoo3's own.

``record-video`` runs ``rl_zoo3.record_video`` (which has neither ``--gym-packages`` nor our
algorithms) with both in place: ``sb3_mamba_envs`` and any ``--gym-packages`` are imported first.
It writes ``<-o folder or run/videos>/<final-model|best-model>-<algo>-<env>-step-0-to-step-<n>.mp4``
through moviepy (its ffmpeg comes from imageio-ffmpeg; no system ffmpeg needed).
``plot-train``, ``plot-from-file`` and ``all-plots`` are rl_zoo3.cli's ``plot_train``,
``plot_from_file`` and ``all_plots`` (underscored names work too); ``plot-train`` only shows its
figure in rl_zoo3, so ``-o FILE`` (ours) saves it instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sb3_mamba.mamba import MAMBA

#: the YAML files, shipped inside the package (a wheel install has them too)
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"


def _literal_call(text: str, key: str) -> dict[str, Any]:
    """A YAML string such as ``"dict(encoder_units=512)"`` as a dict, without running code.

    rl_zoo3 ``eval``s these strings; a file read here may come from anywhere, so only ``dict(...)``
    with literal arguments is accepted.
    """
    import ast

    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"{key}: {text!r} is not a dict(...) expression") from exc
    if not (
        isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "dict" and not tree.args
    ):
        raise ValueError(f"{key}: only dict(name=literal, ...) is accepted, got {text!r}")
    try:
        return {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}
    except ValueError as exc:
        raise ValueError(f"{key}: arguments of {text!r} must be literals") from exc


def load_hyperparams(algo: str, env_id: str, conf_file: str | Path | None = None) -> dict[str, Any]:
    """The entry of ``hyperparams/<algo>.yml`` for ``env_id``, as constructor arguments.

    ``policy_kwargs`` and ``monitor_kwargs`` strings become dicts (literals only); ``n_envs``,
    ``n_timesteps``, ``policy`` and ``monitor_kwargs`` stay in the returned dict for the caller to
    take out. ``KeyError`` names the env if the file has no entry for it.
    """
    import yaml

    path = Path(conf_file) if conf_file is not None else HYPERPARAMS_DIR / f"{algo}.yml"
    with open(path) as file:
        table = yaml.safe_load(file)
    if env_id not in table:
        raise KeyError(f"{path} has no entry for {env_id!r}")
    params = dict(table[env_id])
    for key in ("policy_kwargs", "monitor_kwargs"):
        if isinstance(params.get(key), str):
            params[key] = _literal_call(params[key], key)
    return params


class DreamerTune(MAMBA):
    """MAMBA's implementation with ``preset="dreamer_tune"`` (plain DreamerV3 with MAMBA's sizes)."""

    def __init__(self, *args: Any, preset: str = "dreamer_tune", **kwargs: Any):
        super().__init__(*args, preset=preset, **kwargs)


class DreamerVanilla(MAMBA):
    """MAMBA's implementation with ``preset="dreamer_vanilla"`` (plain DreamerV3 with its own sizes)."""

    def __init__(self, *args: Any, preset: str = "dreamer_vanilla", **kwargs: Any):
        super().__init__(*args, preset=preset, **kwargs)


ZOO_ALGOS: dict[str, type[MAMBA]] = {"mamba": MAMBA, "dreamer_tune": DreamerTune, "dreamer_vanilla": DreamerVanilla}


def sample_mamba_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Optuna search space over MAMBA's key hyperparameters (``-optimize``; same signature as rl_zoo3's samplers)."""
    actor_critic_lr = trial.suggest_float("actor_critic_lr", 1e-5, 1e-3, log=True)
    return {
        "train_ratio": trial.suggest_float("train_ratio", 0.01, 0.5, log=True),
        "imag_horizon": trial.suggest_categorical("imag_horizon", [2, 5, 10, 15]),
        "learning_rate": trial.suggest_float("learning_rate", 3e-5, 1e-3, log=True),
        "actor_lr": actor_critic_lr,
        "critic_lr": actor_critic_lr,
        "ent_coef": trial.suggest_float("ent_coef", 1e-4, 3e-3, log=True),
        "dyn_deter": trial.suggest_categorical("dyn_deter", [128, 256, 512]),
        "units": trial.suggest_categorical("units", [64, 128, 256]),
        "wm_indices": trial.suggest_categorical("wm_indices", [16, 32, 64]),
        "ac_indices": trial.suggest_categorical("ac_indices", [64, 256, 512]),
        "wm_horizon_initial": trial.suggest_categorical("wm_horizon_initial", [25, 50, 100]),
    }


def _convert_sampled(params: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters -> constructor arguments (rl_zoo3 uses this to re-train the best trial)."""
    params = dict(params)
    lr = params.pop("actor_critic_lr", None)
    if lr is not None:
        params.update(actor_lr=lr, critic_lr=lr)
    return params


def register() -> None:
    """Add our algorithms (and their Optuna sampler) to rl_zoo3's tables (idempotent)."""
    from rl_zoo3 import hyperparams_opt, utils

    utils.ALGOS.update(ZOO_ALGOS)
    for algo in ZOO_ALGOS:
        hyperparams_opt.HYPERPARAMS_SAMPLER[algo] = sample_mamba_params
        hyperparams_opt.HYPERPARAMS_CONVERTER[algo] = _convert_sampled


def _with_defaults(argv: list[str], conf_file: bool = True) -> list[str]:
    """Add ``--gym-packages sb3_mamba_envs`` (and, for train, our ``--conf-file``) unless given."""
    argv = list(argv)
    if "--gym-packages" not in argv:
        argv += ["--gym-packages", "sb3_mamba_envs"]
    if conf_file and "--conf-file" not in argv and "-conf" not in argv and "--algo" in argv:
        algo = argv[argv.index("--algo") + 1]
        conf = HYPERPARAMS_DIR / f"{algo}.yml"
        if conf.is_file():
            argv += ["--conf-file", str(conf)]
    return argv


def _pop_option(argv: list[str], names: tuple[str, ...], nargs: str = "1") -> tuple[list[str] | None, list[str]]:
    """Take ``NAME VALUE`` (``nargs="1"``) or ``NAME VALUE...`` (``"+"``) out of ``argv``.

    Returns (the values, or None when ``NAME`` is absent; the rest of ``argv``)."""
    rest, values, i = [], None, 0
    while i < len(argv):
        if argv[i] in names:
            values = [] if values is None else values
            i += 1
            while i < len(argv) and not (argv[i].startswith("-") and len(argv[i]) > 1):
                values.append(argv[i])
                i += 1
                if nargs == "1":
                    break
            if not values:
                raise SystemExit(f"{argv[i - 1]} needs a value")
            continue
        rest.append(argv[i])
        i += 1
    return values, rest


def _require_video_writer() -> None:
    """moviepy (SB3's VecVideoRecorder writes with it) and its ffmpeg, or a clear ``SystemExit``."""
    hint = "install it with: pip install 'sb3-mamba[zoo]' (or: pip install moviepy)"
    try:
        import moviepy  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"record-video writes mp4 files with moviepy, which is not installed: {hint}") from exc
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise SystemExit(
            f"record-video needs an ffmpeg binary for moviepy and found none ({exc}): "
            "pip install imageio-ffmpeg (ships one), or install ffmpeg and set "
            "IMAGEIO_FFMPEG_EXE"
        ) from exc


def _record_video(argv: list[str]) -> None:
    import importlib
    import runpy

    _require_video_writer()
    packages, argv = _pop_option(argv, ("--gym-packages",), nargs="+")
    for package in ["sb3_mamba_envs", *(packages or [])]:
        importlib.import_module(package)
    sys.argv = ["rl_zoo3.record_video", *argv]
    runpy.run_module("rl_zoo3.record_video", run_name="__main__", alter_sys=True)


def _plot_train(argv: list[str]) -> None:
    output, argv = _pop_option(argv, ("-o", "--output"))
    if output:
        import matplotlib

        matplotlib.use("Agg")
    import contextlib
    from unittest import mock

    import matplotlib.pyplot as plt
    from rl_zoo3.plots import plot_train

    def save(*_args: Any, **_kwargs: Any) -> None:
        Path(output[0]).parent.mkdir(parents=True, exist_ok=True)
        plt.savefig(output[0])
        print(f"Saving to {output[0]}")

    sys.argv = ["rl_zoo3.plot_train", *argv]
    with mock.patch.object(plt, "show", save) if output else contextlib.nullcontext():
        plot_train()


def prepare_storage(url: str, attempts: int = 8) -> None:
    """Create Optuna's tables in the database at ``url`` once, when several workers start together.

    Each worker's ``optuna.create_study`` creates any missing tables. On a fresh PostgreSQL database
    workers that start together race there (one fails with ``UniqueViolation`` on
    ``pg_type_typname_nsp_index``, PostgreSQL's catalogue of type names); the study itself is safe
    (``load_if_exists``). So the tables are made here first, retrying until one worker's transaction
    has committed them. JournalStorage files (``*.log``) need nothing.
    """
    if "://" not in url:
        return
    import random
    import time

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            optuna.storages.RDBStorage(url).remove_session()
            return
        except ImportError as exc:  # no driver for the URL's dialect
            shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
            hint = (
                ""
                if not url.startswith("postgres")
                else (
                    " For PostgreSQL: pip install 'sb3-mamba[postgres]' (psycopg 3) and write the URL as "
                    "postgresql+psycopg://user:password@host:port/database"
                )
            )
            raise SystemExit(f"Optuna storage {shown}: no database driver ({exc.__cause__ or exc}).{hint}") from exc
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)  # (another worker is creating them)


def _run_train(argv: list[str]) -> None:
    from rl_zoo3.train import train

    if {"-optimize", "--optimize-hyperparameters"} & set(argv) and "--storage" in argv:
        prepare_storage(argv[argv.index("--storage") + 1])
    sys.argv = ["rl_zoo3.train", *_with_defaults(argv)]
    train()


def _run_enjoy(argv: list[str]) -> None:
    from rl_zoo3.enjoy import enjoy

    sys.argv = ["rl_zoo3.enjoy", *_with_defaults(argv, conf_file=False)]
    enjoy()


def _run_plot(name: str):
    def run(argv: list[str]) -> None:
        from rl_zoo3 import plots

        output, _ = _pop_option(argv, ("-o", "--output"))
        if output:  # rl_zoo3 writes there without creating the folder
            Path(output[0]).parent.mkdir(parents=True, exist_ok=True)
        sys.argv = [f"rl_zoo3.{name}", *argv]
        getattr(plots, name)()

    return run


COMMANDS = {
    "train": _run_train,
    "enjoy": _run_enjoy,
    "record-video": _record_video,
    "plot-train": _plot_train,
    "plot-from-file": _run_plot("plot_from_file"),
    "all-plots": _run_plot("all_plots"),
}


def main(argv: list[str] | None = None) -> None:
    """``sb3-mamba-zoo {train,enjoy,record-video,plot-train,plot-from-file,all-plots} [rl_zoo3 flags]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0].replace("_", "-") if argv else None
    if command not in COMMANDS:
        raise SystemExit(f"usage: sb3-mamba-zoo {{{','.join(COMMANDS)}}} [rl_zoo3 flags]\n\n{__doc__}")
    register()
    COMMANDS[command](argv[1:])


if __name__ == "__main__":
    main()
