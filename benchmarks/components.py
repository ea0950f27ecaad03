"""Each fast path against the eager code it replaces, one component at a time, same run.

    python -m benchmarks.components            # paper sizes: PRN's posterior unroll at H' = 300, imagination
    python -m benchmarks.components --quick    # tiny sizes: a breakage check, not timing

* **posterior unroll** (world model): forward and backward of the RSSM posterior over a
  (16, H' + 1) batch: ``eager`` (``RSSM.observe``), ``scan-aten`` and ``scan-c``
  (``kernels.posterior_scan.observe``), ``compile`` (``kernels.compiled.observe``);
* **imagination** (actor-critic): the actor-critic losses and their backward from 8192
  starts over 16 x (H' + 1) posterior states, discrete actions (Rooms) and continuous
  (PRN): ``eager`` (``ActorCritic.imagine``), ``native-aten`` and ``native-c``
  (``kernels.imagination.imagine``), ``compile`` (``kernels.compiled.imagine``).

Implementations run interleaved in rounds; the median per call is reported, with the
machine's CPU and vector extensions. Writes ``benchmarks/results/components_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from benchmarks.machine import describe, machine_info
from sb3_mamba.behavior import ActorCritic, ImaginationStarts
from sb3_mamba.kernels import compiled, imagination, posterior_scan
from sb3_mamba.kernels.layers import pad_wide_heads
from sb3_mamba.world_model import WorldModel

RESULTS = Path(__file__).with_name("results")
PAPER = dict(units=128, head_layers=2, encoder_units=512, encoder_layers=4, deter=512, stoch=16, classes=16, hidden=64)
QUICK = dict(units=16, head_layers=1, encoder_units=16, encoder_layers=1, deter=32, stoch=4, classes=4, hidden=8)


def observe_paths() -> dict[str, Callable[..., Any]]:
    return {
        "eager": lambda rssm, *args: rssm.observe(*args),
        "scan-aten": lambda rssm, *args: posterior_scan.observe(rssm, *args, use_c=False),
        "scan-c": lambda rssm, *args: posterior_scan.observe(rssm, *args, use_c=True),
        "compile": compiled.observe,
    }


def imagine_paths() -> dict[str, Callable[..., Any] | None]:
    return {
        "eager": None,
        "native-aten": lambda *args: imagination.imagine(*args, use_c=False),
        "native-c": lambda *args: imagination.imagine(*args, use_c=True),
        "compile": compiled.imagine,
    }


def timed(function: Callable[[], None], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        function()
        times.append(time.perf_counter() - tic)
    return times


def interleaved(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for case in cases.values():  # warm-up: compilation, caches, allocator
        case()
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            times[name] += timed(case, 1)
    return {name: statistics.median(values) for name, values in times.items()}


def section_observe(sizes: dict, steps: int, batch: int, rounds: int) -> list[dict[str, Any]]:
    wm = WorldModel(spaces.Box(-1, 1, (4,), np.float32), action_dim=2, **sizes)
    rssm = wm.rssm
    torch.manual_seed(0)
    embed = torch.randn(batch, steps, wm.embed_dim, requires_grad=True)
    action = torch.randn(batch, steps, 2)
    is_first = torch.zeros(batch, steps, dtype=torch.bool)
    is_first[:, 0] = True

    def case(observe):
        def run():
            post, prior = observe(rssm, embed, action, is_first)
            (post["deter"].sum() + post["logits"].sum() + prior["logits"].sum()).backward()

        return run

    medians = interleaved({name: case(fn) for name, fn in observe_paths().items()}, rounds)
    return [
        {"component": "posterior unroll", "case": f"B={batch}, T={steps}", "path": name, "s": s}
        for name, s in medians.items()
    ]


def section_imagine(
    sizes: dict, action_space: spaces.Space, label: str, states: int, batch: int, starts: int, horizon: int, rounds: int
) -> list[dict[str, Any]]:
    action_dim = int(action_space.n) if isinstance(action_space, spaces.Discrete) else action_space.shape[0]
    wm = WorldModel(spaces.Box(-1, 1, (4,), np.float32), action_dim=action_dim, **sizes)
    ac = ActorCritic(wm.rssm.feat_dim, action_space, units=sizes["units"], layers=2)
    torch.manual_seed(0)
    deter = torch.randn(batch * states, sizes["deter"])
    stoch = torch.nn.functional.one_hot(
        torch.randint(sizes["classes"], (batch * states, sizes["stoch"])), sizes["classes"]
    ).float()
    index = (torch.randint(states, (batch, starts // batch)) + states * torch.arange(batch)[:, None]).flatten()
    start = ImaginationStarts(deter, stoch, index)
    padded_wm, padded_ac = copy.deepcopy(wm), copy.deepcopy(ac)
    pad_wide_heads(padded_wm)
    pad_wide_heads(padded_ac)

    def case(imagine):
        native = imagine is not None and imagine is not compiled.imagine
        world_model, actor_critic = (padded_wm, padded_ac) if native else (wm, ac)

        def run():
            actor_loss, critic_loss, _ = actor_critic.losses(
                world_model, start, horizon, 0.997, 0.95, 3e-4, imagine=imagine
            )
            (actor_loss + critic_loss).backward()

        return run

    medians = interleaved({name: case(fn) for name, fn in imagine_paths().items()}, rounds)
    return [
        {
            "component": f"imagination ({label})",
            "case": f"N={starts}, M={batch * states}, h={horizon}",
            "path": name,
            "s": s,
        }
        for name, s in medians.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine_info()
    print(f"# {describe(info)}", flush=True)
    sizes, prefix, batch, starts = (QUICK, 20, 4, 64) if args.quick else (PAPER, 300, 16, 8192)
    rounds = 2 if args.quick else args.rounds
    rows = section_observe(sizes, prefix + 1, batch, rounds)
    rows += section_imagine(sizes, spaces.Discrete(4), "discrete, Rooms", prefix + 1, batch, starts, 1, rounds)
    rows += section_imagine(
        sizes, spaces.Box(-1, 1, (2,), np.float32), "continuous, PRN", prefix + 1, batch, starts, 1, rounds
    )
    lines = [
        f"# Fast paths against eager, per component: {describe(info)}",
        "",
        "| component | case | path | s (forward + backward) | x eager |",
        "|---|---|---|---|---|",
    ]
    eager = {r["component"]: r["s"] for r in rows if r["path"] == "eager"}
    for r in rows:
        lines.append(
            f"| {r['component']} | {r['case']} | {r['path']} | {r['s']:.4f} | {eager[r['component']] / r['s']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    tag = "quick" if args.quick else "cpu"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"components_{tag}.md").write_text(text)
    (args.out_dir / f"components_{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
