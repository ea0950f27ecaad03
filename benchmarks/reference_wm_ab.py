"""Our world model next to the reference's, trained on the same PRN data: does either learn the sparse reward?

    python -m benchmarks.reference_wm_ab --updates 300            # ours and the reference, 300 updates each
    python -m benchmarks.reference_wm_ab --updates 300 --only ours

Why: the PRN reproduction stalls because the world model's reward head never separates rewarded
steps (r ~ 0.85 on ~1% of random-policy steps) from the rest, so imagination sees no reward. This
measures whether the reference's world model (github zoharri/mamba @ 411bdfe, its ``halfcircle``
settings) behaves differently *on identical data*. It is a measuring stick: the reference's code is
imported at run time from ``../shared/refbench/code`` in its own virtualenv (built by
``../shared/refbench/run.sh``, or ``REF_VENV``) and never copied here.

Data: ``--episodes`` PRN meta-episodes (3 x 100) of a uniform random policy, collected by MAMBA's
prefill. Each side trains its world model alone (no actor-critic) on batches of 16 whole
meta-episodes (H' = 300, L_wm = 64, reconstruction window 3, 4 x 512 encoder/decoder, model Adam
1e-4) and every ``--every`` updates reports, over all stored steps, the reward head's mean prediction
at rewarded and unrewarded steps. Ours also reports the decoder's error on the reward entry and the
KL per step. Results: ``benchmarks/results/reference_wm_ab.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

import sb3_mamba_envs  # noqa: F401  (registers the env IDs)
from benchmarks.machine import describe, machine_info
from sb3_mamba import MAMBA
from sb3_mamba.distributions import categorical_kl, symlog, unimix_probs
from sb3_mamba.rssm import RSSM

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFBENCH = ROOT.parent / "shared" / "refbench"
RESULTS = ROOT / "benchmarks" / "results"
HORIZON = 300  # PRN: K x T = 3 x 100

#: Run with the reference's virtualenv, cwd a temporary copy of its code: trains its WorldModel on the
#: data file and prints one JSON line per probe.
REFERENCE_SIDE = r"""
import json, pathlib, sys, time
import numpy as np, torch, ruamel.yaml as yaml, gym
import tools, models
torch.set_num_threads(int(sys.argv[4]))
data_path, updates, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blocks = yaml.safe_load(pathlib.Path("configs.yaml").read_text())
settings = {}
def merge(base, update):
    for key, value in update.items():
        if isinstance(value, dict) and key in base: merge(base[key], value)
        else: base[key] = value
for name in ("defaults", "halfcircle"): merge(settings, blocks[name])
class Config: pass
config = Config()
for key, value in settings.items(): setattr(config, key, tools.args_type(value)(value))
config.device, config.compile, config.num_actions, config.batch_length = "cpu", False, 2, 300
for key in ("reward_layers", "cont_layers", "value_layers", "actor_layers"): setattr(config, key, config.all_layers)
config.encoder["input_reward"] = config.decoder["input_reward"] = True
data = np.load(data_path)
obs, action, reward = data["obs"], data["action"], data["reward"]
box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,))
space = gym.spaces.Dict({"state": box(2), "reward": box(1), "time_step": box(1)})
torch.manual_seed(int(sys.argv[5])); np.random.seed(int(sys.argv[5]))
world_model = models.WorldModel(space, gym.spaces.Box(-1, 1, (2,)), 0, config)
def batch(rows):
    n, length = len(rows), 300
    return {"state": obs[rows, :length, :2], "reward": reward[rows, :length], "time_step": obs[rows, :length, 3],
            "action": action[rows, :length], "is_first": np.eye(1, length, dtype=bool).repeat(n, 0),
            "is_terminal": np.zeros((n, length), bool)}
def probe(update, seconds):
    with torch.no_grad():
        inputs = world_model.preprocess(batch(np.arange(len(reward))))
        post, _ = world_model.dynamics.observe(world_model.encoder(inputs), inputs["action"], inputs["is_first"])
        predicted = world_model.heads["reward"](world_model.dynamics.get_feat(post)).mode()[..., 0].numpy()
    rewarded = reward[:, :300] > 0
    print(json.dumps({"update": update, "reward_pred_rewarded": float(predicted[rewarded].mean()),
                      "reward_pred_unrewarded": float(predicted[~rewarded].mean()), "seconds": seconds}), flush=True)
rng = np.random.default_rng(int(sys.argv[5]))
probe(0, 0.0)
start = time.time()
for update in range(1, updates + 1):
    world_model._train(batch(rng.integers(len(reward), size=16)))
    if update % every == 0:
        probe(update, time.time() - start)
"""


def collect(episodes: int, seed: int) -> dict[str, np.ndarray]:
    """``episodes`` random-policy PRN meta-episodes: obs (N, 301, 4), action (N, 301, 2), reward (N, 301)."""
    env = make_vec_env("MetaPointRobot-v0", n_envs=10, seed=seed)
    model = MAMBA("RSSMPolicy", env, prefill_episodes=episodes, train_ratio=1 / 300, seed=seed)
    model.learn(-(-episodes // 10) * 10 * HORIZON)  # the prefill only: no update runs
    stored = list(model.replay_buffer.episodes)[:episodes]
    return {key: np.stack([episode[key] for episode in stored]) for key in ("obs", "action", "reward")}


def run_ours(data: dict[str, np.ndarray], updates: int, every: int, seed: int) -> list[dict[str, float]]:
    """Train our world model alone (the reference's PRN settings) and probe it every ``every`` updates."""
    env = make_vec_env("MetaPointRobot-v0", n_envs=1, seed=seed)
    model = MAMBA(
        "RSSMPolicy",
        env,
        seed=seed,
        wm_horizon_initial=HORIZON,
        policy_kwargs=dict(encoder_units=512, encoder_layers=4),
    )
    world_model, optimizer = model.policy.world_model, model.policy.model_optimizer
    obs = torch.as_tensor(data["obs"])
    action, reward = torch.as_tensor(data["action"]), torch.as_tensor(data["reward"])
    is_first = torch.zeros(reward.shape, dtype=torch.bool)
    is_first[:, 0] = True
    length = HORIZON  # the reference trains on the first H entries of each stored meta-episode
    rng = np.random.default_rng(seed)

    def probe(update: int, seconds: float) -> dict[str, float]:
        with torch.no_grad():
            inputs = world_model.preprocess(obs[:, :length])
            post, prior = world_model.rssm.observe(world_model.encode(inputs), action[:, :length], is_first[:, :length])
            feat = RSSM.feat(post)  # (N, H, F)
            predicted = world_model.two_hot.mean(world_model.reward_head(feat))  # (N, H)
            decoded = world_model.vector_decoder(feat)  # (N, H, 4)
            kl = categorical_kl(
                unimix_probs(post["logits"], world_model.rssm.unimix),
                unimix_probs(prior["logits"], world_model.rssm.unimix),
            )  # (N, H)
        rewarded = reward[:, :length] > 0
        reward_error = (decoded[..., 2] - symlog(inputs["vector"][..., 2])) ** 2
        return {
            "update": update,
            "reward_pred_rewarded": predicted[rewarded].mean().item(),
            "reward_pred_unrewarded": predicted[~rewarded].mean().item(),
            "decoder_reward_sq_error_rewarded": reward_error[rewarded].mean().item(),
            "kl_per_step": kl.mean().item(),
            "seconds": seconds,
        }

    rows = [probe(0, 0.0)]
    start = time.time()
    for update in range(1, updates + 1):
        picks = torch.as_tensor(rng.integers(len(reward), size=16))
        inputs = world_model.preprocess(obs[picks, :length])
        loss, _, _ = world_model.loss(
            inputs,
            action[picks, :length],
            reward[picks, :length],
            torch.zeros(16, length, dtype=torch.bool),
            is_first[picks, :length],
            torch.ones(16, length, dtype=torch.bool),
            num_indices=64,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(world_model.parameters(), model.model_grad_clip)
        optimizer.step()
        if update % every == 0:
            rows.append(probe(update, time.time() - start))
            print("ours", rows[-1], flush=True)
    return rows


def run_reference(data_file: pathlib.Path, updates: int, every: int, seed: int) -> list[dict[str, float]]:
    """The reference's WorldModel on the same data, in its own virtualenv and a copy of its code."""
    python = pathlib.Path(os.environ.get("REF_VENV", pathlib.Path.home() / ".cache" / "refvenv")) / "bin" / "python"
    if not python.exists() or not (REFBENCH / "code").is_dir():
        raise SystemExit(f"No reference set-up ({python}, {REFBENCH}/code): run ../shared/refbench/run.sh once.")
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(REFBENCH / "code", work, dirs_exist_ok=True)
        (pathlib.Path(work) / "ab_side.py").write_text(REFERENCE_SIDE)
        env = {**os.environ, "PYTHONPATH": str(REFBENCH / "shim")}
        out = subprocess.run(
            [
                str(python),
                "ab_side.py",
                str(data_file),
                str(updates),
                str(every),
                str(torch.get_num_threads()),
                str(seed),
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
    if out.returncode:
        raise SystemExit(f"The reference side failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for row in rows[1:]:
        print("reference", row)
    return rows


def write_report(results: dict, path: pathlib.Path) -> None:
    lines = [
        "# World model A/B on PRN random-policy data: ours vs the reference's",
        "",
        f"{results['episodes']} meta-episodes of a uniform random policy ({results['rewarded_fraction']:.2%} of steps "
        f"rewarded, mean reward there {results['mean_reward_rewarded']:.2f}); each side trains its world model "
        "alone at the reference's PRN settings. Mean predicted reward over all stored steps:",
        "",
        "| updates | ours at rewarded | ours at unrewarded | ours: decoder's sq. error on r at rewarded | "
        "ours: KL per step | reference at rewarded | reference at unrewarded |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = {row["update"]: row for row in results.get("reference", [])}
    for row in results.get("ours", []):
        ref = reference.get(row["update"], {})
        cells = [
            f"{row['update']}",
            f"{row['reward_pred_rewarded']:.3f}",
            f"{row['reward_pred_unrewarded']:.4f}",
            f"{row['decoder_reward_sq_error_rewarded']:.3f}",
            f"{row['kl_per_step']:.2f}",
            f"{ref['reward_pred_rewarded']:.3f}" if ref else "-",
            f"{ref['reward_pred_unrewarded']:.4f}" if ref else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {describe(results['machine'])}.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["ours", "reference"], default=None)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "reference_wm_ab")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    info = machine_info()
    print(describe(info), flush=True)
    data = collect(args.episodes, args.seed)
    rewarded = data["reward"] > 0
    results: dict = {
        "episodes": args.episodes,
        "updates": args.updates,
        "seed": args.seed,
        "machine": info,
        "rewarded_fraction": float(rewarded.mean()),
        "mean_reward_rewarded": float(data["reward"][rewarded].mean()),
    }
    with tempfile.TemporaryDirectory() as work:
        data_file = pathlib.Path(work) / "prn_random.npz"
        np.savez(data_file, **data)
        if args.only in (None, "reference"):
            results["reference"] = run_reference(data_file, args.updates, args.every, args.seed)
    if args.only in (None, "ours"):
        results["ours"] = run_ours(data, args.updates, args.every, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out.with_suffix(".md"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
