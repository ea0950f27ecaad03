"""Reading model zips and replay buffers without unpickling: ``MAMBA.load(..., safe=True)`` and ``.npz`` replay.

Unpickling a file runs code: a pickle may name any importable callable and have it
called. A model file or replay buffer from someone you do not trust must therefore
never reach ``pickle``. SB3's model zip holds

* ``data``: JSON, except that values JSON cannot hold (spaces, the policy class,
  random generators, deques, schedules, our run state) are cloudpickled into it,
  base64-encoded under a ``":serialized:"`` key, and SB3's ``json_to_data``
  unpickles them;
* ``*.pth``: ``torch.save`` pickles of the state dicts and optimiser states;
* text (``_stable_baselines3_version``, ``system_info.txt``).

:func:`prepare_safe_load` reads the file once into memory, loads every ``.pth``
with ``torch.load(weights_only=True)`` (tensors and plain containers only; anything
else is refused), and gives SB3 a replacement for every ``":serialized:"`` entry
through its ``custom_objects`` (which SB3 uses *instead of* unpickling): rebuilt
from the plain-JSON description that :meth:`~sb3_mamba.MAMBA.save` writes next to
it (:data:`SAFE_DATA_KEY`, :func:`describe`), rebuilt by the model itself (the
learning-rate schedules), left out (the run state of an exact resume: the envs then
restart their meta-episodes) or refused with :class:`UnsafeFileError` naming the
entry. SB3 then loads the in-memory copy that was checked.

Replay buffers: :func:`save_replay_npz` writes a
:class:`~sb3_mamba.buffers.MetaEpisodeBuffer` as plain NumPy arrays and
:func:`load_replay_npz` reads them with ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import numpy as np
import torch
from gymnasium import spaces

from sb3_mamba import checkpoints
from sb3_mamba.buffers import MetaEpisodeBuffer
from sb3_mamba.checkpoints import CheckpointError

#: Name of the attribute (an entry of the zip's ``data``) holding :func:`describe`'s plain-JSON descriptions.
SAFE_DATA_KEY = "_safe_load_data"
#: Version of the ``.npz`` replay layout.
REPLAY_FORMAT = 1
#: Saved attributes that ``MAMBA._setup_model`` rebuilds (from ``learning_rate``, ``actor_lr``, ``critic_lr``).
REBUILT_BY_MODEL = frozenset({"lr_schedule", "actor_lr_schedule", "critic_lr_schedule"})
#: The state of the run in progress (exact resume, :mod:`sb3_mamba.checkpoints`): a safe load leaves it out.
RUN_STATE = frozenset({"_run_state", "_last_obs", "_last_original_obs", "_last_episode_starts"})
_BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}


class UnsafeFileError(CheckpointError):
    """A file that a safe load refuses: reading it would unpickle Python objects, which can run code."""


# -- plain-JSON descriptions -------------------------------------------------------
def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A plain-JSON description of a ``Box``, ``Discrete`` or ``Dict`` space (:func:`space_from_json` inverts it).

    :param space: the space.
    :raises TypeError: for other spaces.
    """
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "shape": list(space.shape),
            "dtype": space.dtype.str,
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[key, space_to_json(sub)] for key, sub in space.spaces.items()]}
    raise TypeError(f"No plain description of {space} (Box, Discrete and Dict spaces have one).")


def space_from_json(description: dict[str, Any]) -> spaces.Space:
    """The space :func:`space_to_json` described.

    :param description: the description (read from a file: it is validated, not trusted).
    :raises ValueError: an invalid description.
    """
    kind = description["type"]
    if kind == "Box":
        dtype = np.dtype(description["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"a Box of dtype {dtype} is not numeric.")
        shape = tuple(int(n) for n in description["shape"])
        return spaces.Box(np.asarray(description["low"], dtype), np.asarray(description["high"], dtype), shape, dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(description["n"]), start=int(description["start"]))
    if kind == "Dict":
        return spaces.Dict({str(key): space_from_json(sub) for key, sub in description["spaces"]})
    raise ValueError(f"unknown space type {kind!r}.")


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and lists; TypeError if JSON cannot hold it."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"a dict with keys other than strings: {list(value)!r}.")
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} has no plain-JSON form.")


def _deque_to_json(values: deque) -> dict[str, Any]:
    return {"maxlen": values.maxlen, "items": _plain(list(values))}


def _deque_from_json(description: dict[str, Any]) -> deque:
    maxlen = description["maxlen"]
    if maxlen is not None and not isinstance(maxlen, int):
        raise ValueError(f"maxlen must be an integer or null, got {maxlen!r}.")
    return deque(description["items"], maxlen=maxlen)


def _generator_to_json(rng: np.random.Generator) -> dict[str, Any]:
    return _plain(rng.bit_generator.state)


def _generator_from_json(state: dict[str, Any]) -> np.random.Generator:
    bit_generator = _BIT_GENERATORS[state["bit_generator"]]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: Saved attribute -> (plain-JSON encoder, decoder) for the attributes SB3 cloudpickles
#: (``policy_class`` is decoded against the algorithm's own policy classes, see :func:`prepare_safe_load`).
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any] | None]] = {
    "policy_class": (_class_name, None),
    "observation_space": (space_to_json, space_from_json),
    "action_space": (space_to_json, space_from_json),
    "_rng": (_generator_to_json, _generator_from_json),
    "ep_info_buffer": (_deque_to_json, _deque_from_json),
    "ep_success_buffer": (_deque_to_json, _deque_from_json),
    "_sub_episode_returns": (_deque_to_json, _deque_from_json),
}


def describe(model: Any) -> dict[str, Any]:
    """Plain-JSON descriptions of the model's attributes that SB3 cloudpickles into the zip's ``data``.

    :meth:`~sb3_mamba.MAMBA.save` stores them under :data:`SAFE_DATA_KEY`. An
    attribute without a plain form (e.g. episode statistics holding custom objects)
    is left out; a safe load then refuses it by name.

    :param model: the algorithm being saved.
    """
    description = {}
    for key, (encode, _) in _CODECS.items():
        value = getattr(model, key, None)
        if value is None:
            continue
        try:
            description[key] = encode(value)
        except TypeError:
            continue
    return description


# -- model zips --------------------------------------------------------------------
def _read_into_memory(path: str | pathlib.Path | BinaryIO) -> io.BytesIO:
    """The whole model file as an in-memory file, after :func:`~sb3_mamba.checkpoints.check_model_file`."""
    if isinstance(path, (str, pathlib.Path)):
        checkpoints.check_model_file(path)
        return io.BytesIO(checkpoints.find_model_file(path).read_bytes())
    file = io.BytesIO(path.read())
    checkpoints.check_model_file(file)
    return file


def _check_tensor_files(archive: zipfile.ZipFile, name: str) -> None:
    """Load every ``.pth`` member (as SB3 picks them) with ``torch.load(weights_only=True)``; refuse other objects."""
    for member in archive.namelist():
        if os.path.splitext(member)[1] != ".pth":
            continue
        with archive.open(member) as file:
            try:
                torch.load(file, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                reason = str(exc).strip().splitlines()[0]
                raise UnsafeFileError(
                    f"{name}: {member} holds pickled Python objects besides tensors, which safe=True refuses "
                    f"(torch.load(weights_only=True): {reason})"
                ) from None
            except Exception as exc:  # torch raises many types on a damaged file
                raise CheckpointError(f"{name}: {member} is not readable ({type(exc).__name__}: {exc}).") from exc


def _replacement(
    key: str, entry: dict[str, Any], description: dict[str, Any], policy_classes: Iterable[type], name: str
) -> Any:
    """What SB3 uses instead of unpickling the ``data`` entry ``key``; raises if there is nothing safe."""
    if key in REBUILT_BY_MODEL or key in RUN_STATE:
        return None
    if key not in description or key not in _CODECS:
        raise UnsafeFileError(
            f"{name}: the data entry {key!r} ({entry.get(':type:', 'unknown type')}) is a pickled Python object, "
            "which safe=True does not unpickle (it could run code), and the file holds no plain description of it. "
            f"Pass its value in custom_objects={{{key!r}: ...}}, or load with safe=False only if you trust the file."
        )
    if key == "policy_class":
        known = {_class_name(cls): cls for cls in policy_classes}
        if description[key] not in known:
            raise UnsafeFileError(
                f"{name}: the policy class {description[key]!r} is not one of this algorithm's "
                f"({', '.join(sorted(known))}); pass custom_objects={{'policy_class': YourPolicy}} to use it."
            )
        return known[description[key]]
    try:
        return _CODECS[key][1](description[key])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{name}: the plain description of {key!r} is invalid ({type(exc).__name__}: {exc})."
        ) from exc


def prepare_safe_load(
    path: str | pathlib.Path | BinaryIO, policy_classes: Iterable[type], custom_objects: dict[str, Any] | None
) -> tuple[io.BytesIO, dict[str, Any], bool]:
    """Check a model file for a load that unpickles nothing, and give SB3 what to use instead.

    :param path: the model zip (a path, ``.zip`` appended if needed, or a file object), read once into memory.
    :param policy_classes: the algorithm's policy classes; a saved policy class is accepted only if it is one of them.
    :param custom_objects: the caller's replacements for ``data`` entries, used as given (the caller vouches for them).
    :return: the checked in-memory copy of the file (for SB3 to load), ``custom_objects`` completed with a
        replacement for every pickled ``data`` entry, and whether the file's run state was left out.
    :raises UnsafeFileError: a ``.pth`` member holds pickled objects besides tensors, or a pickled ``data``
        entry has no safe replacement (the message names it).
    :raises CheckpointError: the file is not an intact sb3-mamba model zip.
    """
    name = str(path) if isinstance(path, (str, pathlib.Path)) else "the model file"
    file = _read_into_memory(path)
    with zipfile.ZipFile(file) as archive:
        _check_tensor_files(archive, name)
        data = json.loads(archive.read("data"))
    file.seek(0)
    description = data.get(SAFE_DATA_KEY)
    if not isinstance(description, dict):
        description = {}
    replacements = dict(custom_objects or {})
    for key, entry in data.items():
        if key not in replacements and isinstance(entry, dict) and ":serialized:" in entry:
            replacements[key] = _replacement(key, entry, description, policy_classes, name)
    return file, replacements, "_run_state" in data


# -- replay buffers ----------------------------------------------------------------
def is_npz(path: str | pathlib.Path | BinaryIO) -> bool:
    """Whether ``path`` names a ``.npz`` replay file (by its suffix; a file object by its zip signature)."""
    if isinstance(path, (str, pathlib.Path)):
        return pathlib.Path(path).suffix == ".npz"
    position = path.tell()
    signature = path.read(2)
    path.seek(position)
    return signature == b"PK"


def save_replay_npz(file: BinaryIO, buffer: MetaEpisodeBuffer) -> None:
    """Write ``buffer`` as an ``.npz`` of plain arrays (:meth:`MetaEpisodeBuffer.to_arrays`, the spaces as JSON text).

    :param file: an open binary file.
    :param buffer: the replay buffer.
    """
    np.savez(
        file,
        format=np.array(REPLAY_FORMAT),
        observation_space=np.array(json.dumps(space_to_json(buffer.observation_space))),
        action_space=np.array(json.dumps(space_to_json(buffer.action_space))),
        **buffer.to_arrays(),
    )


def _read_arrays(path: str | pathlib.Path | BinaryIO, name: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read with ``allow_pickle=False``."""
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # neither .npz nor .npy: numpy would unpickle it
            raise UnsafeFileError(f"{name} is not an .npz file but (numpy guesses) a pickle: refused.") from None
        raise CheckpointError(f"{name} is not a readable .npz replay file: {exc}") from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{name} is not a readable .npz replay file ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{name} holds a single array, not an .npz replay file.")
    arrays = {}
    with npz:
        for member in npz.files:
            try:
                arrays[member] = npz[member]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise UnsafeFileError(
                        f"{name}: the array {member!r} holds pickled Python objects, which a safe load refuses ({exc})."
                    ) from None
                raise CheckpointError(f"{name}: the array {member!r} is not readable: {exc}") from exc
            except (EOFError, zipfile.BadZipFile) as exc:
                raise CheckpointError(f"{name}: the array {member!r} is not readable ({exc}).") from exc
    return arrays


def load_replay_npz(path: str | pathlib.Path | BinaryIO) -> MetaEpisodeBuffer:
    """Read a replay buffer written by :func:`save_replay_npz`, with ``np.load(allow_pickle=False)``.

    Every array is read, so a file holding pickled objects is refused whatever name they hide under.

    :param path: the ``.npz`` file (a path or a file object).
    :return: the buffer, with the spaces it was recorded with.
    :raises UnsafeFileError: the file holds pickled objects (a pickle, or an object array).
    :raises CheckpointError: the file is not a replay buffer of this format.
    """
    name = str(path) if isinstance(path, (str, pathlib.Path)) else "the replay file"
    arrays = _read_arrays(path, name)
    version = arrays.get("format")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or not 1 <= version <= REPLAY_FORMAT:
        raise CheckpointError(
            f"{name} is not an sb3-mamba replay file of format <= {REPLAY_FORMAT} (format: {version!r})."
        )
    try:
        observation_space, action_space = (
            space_from_json(json.loads(str(arrays[key]))) for key in ("observation_space", "action_space")
        )
        return MetaEpisodeBuffer.from_arrays(arrays, observation_space, action_space)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{name} is not a consistent replay file ({type(exc).__name__}: {exc}).") from exc
