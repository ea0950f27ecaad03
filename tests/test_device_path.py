"""What a GPU runs, checked on the CPU: updates that read nothing back on the host, batches gathered
from a copy of the replay in device memory (:mod:`sb3_mamba.device_replay`), and non-finite stages
skipped on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from sb3_mamba import NonFiniteLossError
from sb3_mamba.buffers import MetaEpisodeBuffer
from sb3_mamba.device_replay import DeviceReplay
from sb3_mamba.mamba import SkipNonFinite
from tests.test_kernels import backend_named
from tests.test_mamba import rooms_env, tiny_model

# -- reading on the host -----------------------------------------------------------------------------------
#: ATen ops that make a GPU's host wait for the device: a value read, or an output shape that depends on values
READING_OPS = {"_local_scalar_dense", "nonzero", "_unique", "_unique2", "unique_dim", "unique_consecutive"}
READING_OPS |= {"masked_select", "bincount", "histc", "equal", "is_nonzero", "repeat_interleave"}
#: Python-level reads that bypass ATen on a CPU tensor
READING_METHODS = {"tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Records every read of tensor data on the host (on a GPU, each is a wait for the device)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        this = self

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                boolean_index = name in ("index", "index_put", "index_put_") and any(
                    i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]
                )
                if name in READING_OPS or boolean_index:
                    this.reads.append(f"aten.{name}")
                return func(*args, **(kwargs or {}))

        self.ops = Ops()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READING_METHODS:
            self.reads.append(f"Tensor.{name}")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.ops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.ops.__exit__(*exc)


def test_host_reads_are_detected():
    x = torch.randn(6)
    with HostReads() as detector:
        x.tolist(), bool(x.sum() > 0), torch.unique(x), x[x > 0], int(x.argmax())
        torch.where(x > 0, x, 0.0)  # (elementwise: no read)
    assert detector.reads == [
        "Tensor.tolist",
        "Tensor.__bool__",
        "aten._local_scalar_dense",
        "aten._unique2",
        "aten.index",  # (a boolean index)
        "Tensor.__int__",
        "aten._local_scalar_dense",
    ]


def update_reads(backend: str, env_id: str) -> list[str]:
    """The host reads of sampling a batch and one update of a small model on ``backend``."""
    env = rooms_env() if env_id == "rooms" else point_robot_env()
    model = tiny_model(env, ac_indices=40, replay_on_device=True)
    model.learn(120)
    model.kernels = backend_named(backend)
    with HostReads() as detector:
        model._update(model._sample(), SkipNonFinite(model.device))
    return detector.reads


def point_robot_env():
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env("MetaPointRobot-v0", n_envs=2, seed=0, env_kwargs={"sub_episode_length": 10})


@pytest.mark.parametrize("env_id", ["rooms", "point_robot"])  # discrete (REINFORCE), continuous (dynamics)
@pytest.mark.parametrize("backend", ["eager", "native-sync-free"])
def test_an_update_reads_nothing_on_the_host(backend, env_id):
    assert update_reads(backend, env_id) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_an_update_on_the_gpu_waits_for_nothing(backend):
    model = tiny_model(rooms_env(), ac_indices=40, backend=backend, device="cuda")
    model.learn(120)
    assert model.device_replay is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model._update(model._sample(), SkipNonFinite(model.device))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_cpu_fast_path_reads_on_the_host():
    """The control: on the CPU the native path reads (unique steps, restarts) to skip work."""
    assert len(update_reads("native", "rooms")) >= 3


# -- non-finite stages skipped on the device --------------------------------------------------------------
def test_a_non_finite_update_and_every_later_one_are_skipped_then_reported():
    """Three updates, the critic's gradient NaN in the second: the first applies in full, the second's
    world-model step too, nothing after; the error names that update."""
    reference = tiny_model(rooms_env())  # (seeds the global generator: each model learns right after)
    reference.learn(60)
    torch.manual_seed(5)
    reference.train(1)
    model = tiny_model(rooms_env())
    model.learn(60)
    calls = []
    weight = model.policy.actor_critic.critic[0].weight
    weight.register_hook(lambda grad: grad * float("nan") if calls.append(1) or len(calls) == 2 else grad)
    start = model._n_updates
    torch.manual_seed(5)
    with pytest.raises(NonFiniteLossError, match=f"actor-critic .*critic gradient norm in update {start + 1}"):
        model.train(3)
    assert model._n_updates == start + 1 and len(calls) == 3  # the third update ran and was skipped
    for name in ("actor", "critic", "slow_critic"):
        for p_ref, p in zip(
            getattr(reference.policy.actor_critic, name).parameters(),
            getattr(model.policy.actor_critic, name).parameters(),
            strict=True,
        ):
            torch.testing.assert_close(p, p_ref, rtol=0, atol=0)
    # Adam counted only the applied steps
    assert {float(s["step"]) for s in model.policy.critic_optimizer.state.values()} == {float(start + 1)}


def test_zero_gradient_steps_change_nothing():
    model = tiny_model(rooms_env())
    model.learn(60)
    before, updates = [p.detach().clone() for p in model.policy.parameters()], model._n_updates
    model.train(0)
    assert model._n_updates == updates
    assert all(torch.equal(a, p) for a, p in zip(before, model.policy.parameters(), strict=True))


def test_the_guard_only_flags_non_finite_values():
    guard = SkipNonFinite(torch.device("cpu"))
    guard.check("world model", {"loss": torch.tensor(1.0), "norm": torch.tensor(3.0)}, 0)
    assert float(guard.found) == 0.0
    guard.check("actor-critic", {"loss": torch.tensor(float("inf"))}, 0)
    guard.check("world model", {"loss": torch.tensor(1.0)}, 1)
    assert float(guard.found) == 1.0  # stays set


# -- the replay in device memory ---------------------------------------------------------------------------
OBS_SPACES = {
    "box": spaces.Box(-1, 1, (3,), np.float32),
    "dict-uint8": spaces.Dict(
        {"image": spaces.Box(0, 255, (2, 2, 1), np.uint8), "state": spaces.Box(-1, 1, (2,), np.float32)}
    ),
}


def add_meta_episode(buffer: MetaEpisodeBuffer, length: int, rng: np.random.Generator) -> None:
    """One meta-episode of ``length`` steps (``length + 1`` entries) with random contents."""
    space = buffer.observation_space
    for t in range(length):
        obs, next_obs = (
            {k: np.stack([s.sample()]) for k, s in space.spaces.items()}
            if isinstance(space, spaces.Dict)
            else np.stack([space.sample()])
            for _ in range(2)
        )
        buffer.add(
            obs,
            next_obs,
            np.array([rng.integers(3)]),
            rng.normal(size=1),
            np.array([rng.random() < 0.1]),
            np.array([t == length - 1]),
        )


def assert_same_batch(device_batch: dict, batch) -> None:
    for name, value in device_batch.items():
        expected = getattr(batch, name)
        if isinstance(value, dict):
            for key in value:
                np.testing.assert_array_equal(value[key].numpy(), expected[key])
                assert value[key].dtype == torch.from_numpy(expected[key]).dtype
        else:
            np.testing.assert_array_equal(value.numpy(), expected, err_msg=name)
            assert value.dtype == torch.from_numpy(expected).dtype, name


@pytest.mark.parametrize("obs_space", OBS_SPACES.values(), ids=OBS_SPACES.keys())
def test_the_device_replay_gathers_what_the_buffer_gathers(obs_space):
    """Meta-episodes of 2-30 steps into a 90-entry buffer, some of them several between updates: the
    copy follows the drops, grows to the capacity, wraps around, and gathers the buffer's batches."""
    rng = np.random.default_rng(0)
    buffer = MetaEpisodeBuffer(90, obs_space, spaces.Discrete(3))
    replay = DeviceReplay("cpu")
    wrapped = False
    for _ in range(40):
        for _ in range(rng.integers(1, 4)):
            add_meta_episode(buffer, int(rng.integers(2, 31)), rng)
        replay.update(buffer)
        assert replay.ring_size <= 90 and len(replay.episodes) == len(buffer)
        wrapped |= any(start + length > replay.ring_size for start, length in replay.episodes)
        for draw in (buffer.draw_prefixes, buffer.draw_windows):
            length = int(rng.integers(1, 35))  # longer than some meta-episodes: padding
            picks = draw(5, length, rng)
            assert_same_batch(replay.gather(picks, length), buffer.gather(picks, length))
    assert wrapped and replay.ring_size == 90 and buffer.num_episodes_added > 40
    # a meta-episode longer than the capacity (the buffer then keeps it alone)
    add_meta_episode(buffer, 120, rng)
    replay.update(buffer)
    picks = buffer.draw_windows(3, 50, rng)
    assert len(buffer) == 1 and replay.ring_size == 121
    assert_same_batch(replay.gather(picks, 50), buffer.gather(picks, 50))


def test_the_device_replay_follows_a_loaded_buffer():
    rng = np.random.default_rng(1)
    buffer = MetaEpisodeBuffer(200, OBS_SPACES["box"], spaces.Discrete(3))
    for _ in range(5):
        add_meta_episode(buffer, 10, rng)
    replay = DeviceReplay("cpu")
    replay.update(buffer)
    loaded = MetaEpisodeBuffer.from_arrays(buffer.to_arrays(), OBS_SPACES["box"], spaces.Discrete(3))
    add_meta_episode(loaded, 7, rng)
    replay.update(loaded)
    picks = loaded.draw_prefixes(8, 12, rng)
    assert len(replay.episodes) == 6
    assert_same_batch(replay.gather(picks, 12), loaded.gather(picks, 12))


def test_training_from_the_device_replay_is_the_same_training():
    params = []
    for on_device in (False, True):
        model = tiny_model(rooms_env(), replay_on_device=on_device)
        model.learn(150)
        assert (model.device_replay is not None) == on_device and model._n_updates > 0
        params.append(torch.cat([p.detach().flatten() for p in model.policy.parameters()]))
    assert model.device_replay.ring_size > 0
    torch.testing.assert_close(params[1], params[0], rtol=0, atol=0)
