"""Checkpoints that survive crashes, and the run state that makes a resumed run continue exactly.

Three pieces, used by :class:`~sb3_mamba.MAMBA`'s ``save``/``load``/``learn``:

* :func:`atomic_write`: every file is written to a temporary file in the same
  folder, flushed to disk, then renamed over the target. A run killed mid-write
  (SIGKILL, power loss) leaves the previous file intact, never half a file.
* :func:`check_model_file`: reads a model zip's table of contents before SB3
  unpickles anything, and turns a truncated, corrupted, foreign or too-new file
  into one :class:`CheckpointError` naming the cause.
* :func:`capture_run_state` / :func:`restore_run_state`: what SB3's zip does not
  hold but an exact continuation needs: the envs' meta-episodes in progress
  (``MetaEpisodeEnv.get_state``), the RSSM state carried while acting, the last
  observation, and the torch/NumPy/Python/action-space random generators. The
  model and optimisers (zip), the replay buffer (``save_replay_buffer``) and the
  counters (``num_timesteps``, ``_n_updates``, ``_episode_num``, update credit,
  replay-sampling generator: saved attributes) complete the picture.

:func:`latest_checkpoint` finds the newest *complete* checkpoint (model and
replay buffer) that ``CheckpointCallback(save_replay_buffer=True)`` wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import random
import re
import tempfile
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

if TYPE_CHECKING:
    from sb3_mamba.mamba import MAMBA

#: Version of the model-zip layout. Bump when a change makes older files unreadable, and keep
#: loading the older versions where possible.
CHECKPOINT_FORMAT = 1
#: Name of the format-version attribute in the zip's ``data``.
FORMAT_KEY = "_checkpoint_format"


class CheckpointError(ValueError):
    """A model or replay-buffer file that cannot be used (corrupted, truncated, foreign, too new, mismatched)."""


def resolve_path(path: str | pathlib.Path, suffix: str) -> pathlib.Path:
    """The file SB3 writes for ``path``: ``path.<suffix>`` when ``path`` has no suffix."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}.{suffix}") if path.suffix == "" else path


def atomic_write(path: str | pathlib.Path, suffix: str, write: Callable[[BinaryIO], None]) -> pathlib.Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path`` (atomic on POSIX).

    Returns the final path (``suffix`` appended when ``path`` has none, like SB3).
    """
    final = resolve_path(path, suffix)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return final


def find_model_file(path: str | pathlib.Path) -> pathlib.Path:
    """The model file SB3 reads for ``path``: ``path`` itself, else ``path.zip``; ``FileNotFoundError`` if neither."""
    path = pathlib.Path(path)
    if not path.exists() and resolve_path(path, "zip").exists():
        path = resolve_path(path, "zip")
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    return path


def check_model_file(path: str | pathlib.Path | Any) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an intact sb3-mamba model zip this version reads.

    :param path: a path, or an in-memory file (``io.BytesIO``, named "the model file" in errors);
        other file objects are left to SB3 (nothing to check without consuming them).
    """
    source: io.BytesIO | pathlib.Path
    if isinstance(path, io.BytesIO):
        source, path = path, "the model file"
    elif isinstance(path, (str, pathlib.Path)):
        source = path = find_model_file(path)
    else:
        return
    try:
        with zipfile.ZipFile(source) as archive:
            bad_member = archive.testzip()
            if bad_member is not None:
                raise CheckpointError(f"{path} is corrupted: member {bad_member!r} fails its CRC check.")
            names = set(archive.namelist())
            if "data" not in names:
                # (a truncated model zip can still open: the tensor files inside are zips themselves)
                raise CheckpointError(
                    f"{path} is not a complete Stable-Baselines3 model zip (no 'data' entry): "
                    "truncated, corrupted or another kind of zip."
                )
            data = json.loads(archive.read("data"))
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path} is not a readable model zip (truncated or corrupted?): {exc}.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupted: its 'data' entry is not valid JSON ({exc}).") from exc
    if FORMAT_KEY not in data:
        raise CheckpointError(
            f"{path} was not saved by sb3-mamba's MAMBA (no {FORMAT_KEY!r}; policy class "
            f"{_saved_class_name(data.get('policy_class'))}): "
            "load it with the algorithm that saved it."
        )
    version = data[FORMAT_KEY]
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this sb3-mamba reads formats <= {CHECKPOINT_FORMAT}: upgrade."
        )
    missing = {
        "policy.pth",
        "policy.model_optimizer.pth",
        "policy.actor_optimizer.pth",
        "policy.critic_optimizer.pth",
    } - names
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {sorted(missing)}.")


def _saved_class_name(entry: Any) -> str:
    """``module.Class`` of a class that SB3's ``data_to_json`` stored (it keeps the class's ``__dict__`` as text)."""
    if not isinstance(entry, dict):
        return repr(entry)
    match = re.match(r"<function (\w+)\.__init__", str(entry.get("__init__", "")))
    return f"{entry.get('__module__', '?')}.{match.group(1) if match else '?'}"


def latest_checkpoint(
    save_path: str | pathlib.Path, name_prefix: str = "rl_model"
) -> tuple[pathlib.Path, pathlib.Path | None] | None:
    """The newest ``CheckpointCallback`` checkpoint in ``save_path``: ``(model_zip, replay_buffer_pkl)``.

    Prefers the newest step with *both* files (a run killed between writing the
    model and its buffer leaves a model without buffer: that step is skipped);
    falls back to the newest model alone when no buffer was ever saved. None if
    the folder holds no checkpoint.
    """
    save_path = pathlib.Path(save_path)
    pattern = re.compile(rf"^{re.escape(name_prefix)}_(\d+)_steps\.zip$")
    steps = sorted((int(m.group(1)) for p in save_path.glob("*.zip") if (m := pattern.match(p.name))), reverse=True)
    if not steps:
        return None
    for step in steps:
        buffer = save_path / f"{name_prefix}_replay_buffer_{step}_steps.pkl"
        if buffer.exists():
            return save_path / f"{name_prefix}_{step}_steps.zip", buffer
    return save_path / f"{name_prefix}_{steps[0]}_steps.zip", None


# -- run state ---------------------------------------------------------------------
def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_cpu(x) for x in tree)
    return tree


def _to_device(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_device(x, device) for x in tree)
    return tree


def capture_run_state(model: MAMBA) -> dict[str, Any]:
    """What an exact continuation needs beyond SB3's saved attributes (see the module docstring)."""
    state: dict[str, Any] = {
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if model.device.type == "cuda" else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "action_space": model.action_space.np_random.bit_generator.state,
        },
        "env": None,
    }
    if model.env is None or model._last_obs is None:
        return state
    try:
        env_states = model.env.env_method("get_state")
    except (AttributeError, NotImplementedError):
        return state  # an env without snapshots: a resumed run restarts its meta-episodes
    try:
        monitor_rewards = model.env.get_attr("rewards")  # Monitor's rewards of the episode in progress
    except AttributeError:
        monitor_rewards = None
    state["env"] = {
        "states": env_states,
        "monitor_rewards": monitor_rewards,
        "last_obs": model._last_obs,
        "last_episode_starts": np.array(model._last_episode_starts),
        "rollout_state": _to_cpu(model._rollout_state),
    }
    return state


def restore_run_state(model: MAMBA, state: dict[str, Any]) -> bool:
    """Continue the run captured by :func:`capture_run_state`; True if the envs' meta-episodes were restored.

    The random generators are always restored. The envs are restored when the
    snapshot has them, the current envs can take them (``set_state``) and their
    number matches; otherwise the caller resets the envs and drops the replay
    buffer's unfinished meta-episodes.
    """
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and model.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    model.action_space.np_random.bit_generator.state = rng["action_space"]
    saved = state["env"]
    if saved is None or model.env is None or len(saved["states"]) != model.n_envs:
        return False
    model.env.reset()  # the wrappers (order enforcing, Monitor) need one reset before stepping
    try:
        for i, env_state in enumerate(saved["states"]):
            model.env.env_method("set_state", env_state, indices=[i])
    except (AttributeError, NotImplementedError):
        return False
    if saved["monitor_rewards"] is not None:
        for i, rewards in enumerate(saved["monitor_rewards"]):
            model.env.env_method("set_wrapper_attr", "rewards", list(rewards), indices=[i], force=False)
    model._last_obs = saved["last_obs"]
    model._last_episode_starts = saved["last_episode_starts"]
    model._rollout_state = _to_device(saved["rollout_state"], model.device)
    return True
