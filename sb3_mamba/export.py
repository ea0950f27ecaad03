"""ONNX export of the acting policy, its recurrent state as input and output.

The exported graph is one acting step of :class:`~sb3_mamba.policies.RSSMPolicy`:
``(obs, deter, stoch, prev_action, episode_start) -> (action, deter, stoch, prev_action)``,
where ``action`` is what ``env.step`` takes and the last three outputs are the next step's
state (feed them back, with ``episode_start`` True on the first step of a meta-episode, as
with ``predict``). It is deterministic: the posterior latent's mode and the actor's mode, i.e.
``predict(..., deterministic=True)`` with ``policy.deterministic_latent = True``.

    from sb3_mamba import export_onnx
    export_onnx(model, "mamba.onnx")
    session = onnxruntime.InferenceSession("mamba.onnx")
    state = initial_onnx_state(model, n_envs)
    action, *state = session.run(None, {"obs": obs, **state, "episode_start": starts})
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from sb3_mamba.rssm import RSSM

STATE_NAMES = ("deter", "stoch", "prev_action")


class OnnxActingPolicy(nn.Module):
    """One deterministic acting step of ``policy`` as a plain tensor function (see the module docstring)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.obs_keys = (
            sorted(policy.observation_space.spaces) if isinstance(policy.observation_space, spaces.Dict) else None
        )

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.obs_keys is None:
            obs, (deter, stoch, prev_action, episode_start) = inputs[0], inputs[1:]
        else:
            obs, (deter, stoch, prev_action, episode_start) = (
                dict(zip(self.obs_keys, inputs, strict=False)),
                inputs[len(self.obs_keys) :],
            )
        policy = self.policy
        wm = policy.world_model
        embed = wm.encode(wm.preprocess(obs))  # (n, E)
        post = wm.rssm.obs_step(
            {"deter": deter, "stoch": stoch}, prev_action, embed, episode_start.bool(), sample=False
        )
        action = policy.actor_critic.mode(RSSM.feat(post))  # (n, A)
        if policy.discrete:
            env_action = action.argmax(-1)  # (n,)
            if int(policy.action_space.start):  # (an added 0 becomes a constant the ONNX writer cannot save)
                env_action = env_action + int(policy.action_space.start)
        else:
            low, high = policy._low.reshape(-1), policy._high.reshape(-1)
            env_action = (low + (action + 1.0) * 0.5 * (high - low)).reshape(-1, *policy.action_space.shape)
        return env_action, post["deter"], post["stoch"], action


def initial_onnx_state(model: Any, n: int) -> dict[str, np.ndarray]:
    """The state inputs of the exported graph for ``n`` envs at the start of their meta-episodes."""
    policy = getattr(model, "policy", model)
    with torch.no_grad():
        state = policy.initial_state(n)
    return {name: value.cpu().numpy() for name, value in zip(STATE_NAMES, state, strict=True)}


def export_onnx(model: Any, path: str | pathlib.Path, opset_version: int = 18) -> pathlib.Path:
    """Write ``model``'s (a MAMBA or an RSSMPolicy) acting step to ``path`` as ONNX; returns the path.

    Inputs: ``obs`` (or ``obs_<key>`` per key of a Dict space), ``deter``, ``stoch``,
    ``prev_action``, ``episode_start`` (bool), all with a dynamic batch axis. Outputs:
    ``action``, ``next_deter``, ``next_stoch``, ``next_prev_action``.
    """
    policy = getattr(model, "policy", model)
    path = pathlib.Path(path)
    module = OnnxActingPolicy(policy).eval()
    space = policy.observation_space
    subspaces = {f"obs_{k}": space.spaces[k] for k in module.obs_keys} if module.obs_keys else {"obs": space}
    n = 2
    example_obs = [torch.as_tensor(np.stack([s.sample() for _ in range(n)])) for s in subspaces.values()]
    state = initial_onnx_state(policy, n)
    example = (*example_obs, *(torch.as_tensor(state[k]) for k in STATE_NAMES), torch.ones(n, dtype=torch.bool))
    input_names = [*subspaces, *STATE_NAMES, "episode_start"]
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = (tuple({0: batch} for _ in input_names),)  # forward(*inputs): one varargs entry
    with torch.no_grad():  # acting is the eager path: the graph capture sees plain torch ops
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=input_names,
            output_names=["action", "next_deter", "next_stoch", "next_prev_action"],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            # (onnxscript's constant folding fails on the lifted tensor constants of this graph)
            optimize=False,
        )
    program.save(str(path))
    return path
