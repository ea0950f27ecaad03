"""What ``backend="auto"`` runs on this machine: each C++ kernel only where it beats ATen here, by measurement.

The C++ kernels are compiled for the CPU they run on, but whether they beat ATen's ops (oneDNN,
vectorised with whatever the CPU has) depends on that CPU and on the model's sizes. So ``"auto"``
times each kernel against the ATen path it replaces, once per machine and size, and keeps the
faster: the posterior unroll (forward and backward, the same hand-written backward either way) and
imagination's GRU cell. The choice is cached as JSON beside the kernels (keyed by the CPU's model
and flags, torch, the instruction set in use, the kernel source and the sizes) and logged with its timings.

The measurement draws its inputs from its own generator and takes latent modes, so torch's global
random state (and a seeded run's samples) are untouched.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sb3_mamba.kernels import native, posterior_scan
from sb3_mamba.kernels.gru import folded_norm_bias
from sb3_mamba.networks import gru_update
from sb3_mamba.rssm import RSSM

#: rows of imagination's GRU cell in the measurement (MAMBA: 8192 starts)
GRU_ROWS = 4096
#: steps of the posterior unroll in the measurement (its cost is linear in them)
SCAN_STEPS = 24


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """Which parts run on the C++ kernels, and the median seconds that decided it."""

    scan_c: bool
    gru_c: bool
    timings: dict[str, float]

    def describe(self) -> str:
        t = self.timings

        def part(name: str, on_c: bool, key: str) -> str:
            return (
                f"{name} on {'C++ kernels' if on_c else 'ATen ops'} "
                f"({t[key + '_c'] * 1e3:.1f} ms C++, {t[key + '_aten'] * 1e3:.1f} ms ATen)"
            )

        return part("posterior unroll", self.scan_c, "scan") + "; " + part("imagination's GRU", self.gru_c, "gru")


def pick(timings: dict[str, float]) -> KernelChoice:
    """The choice from measured medians: a kernel runs only where it is faster than ATen."""
    return KernelChoice(
        scan_c=timings["scan_c"] < timings["scan_aten"],
        gru_c=timings["gru_c"] < timings["gru_aten"],
        timings=dict(timings),
    )


def choose(rssm: RSSM, batch_size: int) -> KernelChoice:
    """The cached choice for this machine and these sizes, measured first if there is none."""
    if native.posterior_scan_library() is None:
        nan = float("nan")
        return KernelChoice(False, False, {"scan_c": nan, "scan_aten": nan, "gru_c": nan, "gru_aten": nan})
    path = native.cache_dir() / f"choice-{_key(rssm, batch_size)}.json"
    try:
        return pick(json.loads(path.read_text())["timings"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet here (or an unreadable file): measure
    choice = pick(measure(rssm, batch_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        json.dump({"timings": choice.timings}, file)
    os.replace(tmp, path)  # (atomic: a concurrent process reads the old file or the new one)
    return choice


def measure(rssm: RSSM, batch_size: int, rounds: int = 5) -> dict[str, float]:
    """Median seconds of each kernel and of the ATen path it replaces, alternated over ``rounds``."""
    model = copy.deepcopy(rssm).float().cpu()
    generator = torch.Generator().manual_seed(0)
    embed = torch.randn(batch_size, SCAN_STEPS, model.embed_dim, generator=generator, requires_grad=True)
    action = torch.randn(batch_size, SCAN_STEPS, model.action_dim, generator=generator)
    is_first = torch.zeros(batch_size, SCAN_STEPS, dtype=torch.bool)
    is_first[:, 0] = True

    def scan(use_c: bool) -> Callable[[], None]:
        def run() -> None:
            post, prior = posterior_scan.observe(model, embed, action, is_first, sample=False, use_c=use_c)
            (post["deter"].sum() + post["logits"].sum() + prior["logits"].sum()).backward()

        return run

    cell, deter = model.gru, model.deter_dim
    gates = torch.randn(GRU_ROWS, 3 * deter, generator=generator)
    state = torch.randn(GRU_ROWS, deter, generator=generator).tanh()
    bias = folded_norm_bias(cell.norm.bias)

    def gru(use_c: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                if use_c:
                    native.gru_cell(gates, state, cell.norm.weight, bias, cell.norm.eps)
                else:
                    gru_update(
                        F.layer_norm(gates, (3 * deter,), cell.norm.weight, cell.norm.bias, cell.norm.eps), state
                    )

        return run

    cases = {"scan_c": scan(True), "scan_aten": scan(False), "gru_c": gru(True), "gru_aten": gru(False)}
    for case in cases.values():  # warm-up: first-call allocations, oneDNN's weight packing
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            tic = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(values) for name, values in times.items()}


def _key(rssm: RSSM, batch_size: int) -> str:
    model_sizes = (rssm.deter_dim, rssm.stoch_dim, rssm.classes, rssm.embed_dim, rssm.hidden_dim, rssm.action_dim)
    sizes = (*model_sizes, batch_size, torch.get_num_threads())
    # the instruction set torch and the kernels may use (both sides of the measurement)
    isa = (
        *native.compile_flags(),
        torch.backends.cpu.get_cpu_capability(),
        os.environ.get("DNNL_MAX_CPU_ISA"),
    )
    parts: list[Any] = [native.SOURCE.read_text(), torch.__version__, native._cpu_signature(), isa, sizes]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
