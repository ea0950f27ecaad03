"""ONNX export of the acting policy: onnxruntime acts as predict() over whole meta-episodes."""

from __future__ import annotations

import numpy as np
import pytest

from sb3_mamba import export_onnx, initial_onnx_state
from tests.test_fidelity import WideBoxEnv
from tests.test_mamba import rooms_env, tiny_model

onnxruntime = pytest.importorskip("onnxruntime")


def run_both(model, env, path, steps):
    export_onnx(model, path)
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["obs", "deter", "stoch", "prev_action", "episode_start"]
    model.policy.deterministic_latent = True
    obs = env.reset()
    starts = np.ones(env.num_envs, dtype=bool)
    onnx_state = initial_onnx_state(model, env.num_envs)
    torch_state = None
    compared = 0
    for _ in range(steps):
        action, torch_state = model.predict(obs, torch_state, starts, deterministic=True)
        onnx_action, *next_state = session.run(
            None, {"obs": obs.astype(np.float32), **onnx_state, "episode_start": starts}
        )
        np.testing.assert_allclose(onnx_action, action, rtol=1e-4, atol=1e-5)
        for name, value, reference in zip(("deter", "stoch", "prev_action"), next_state, torch_state, strict=True):
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5, err_msg=name)
        onnx_state = dict(zip(("deter", "stoch", "prev_action"), next_state, strict=True))
        obs, _, dones, _ = env.step(action)
        starts = dones
        compared += 1
    return compared


def test_onnx_discrete_policy_acts_as_predict_over_a_meta_episode(tmp_path):
    env = rooms_env(n_envs=2, sub_episode_length=10)  # meta-episodes of 20 steps
    model = tiny_model(env)
    model.learn(100)  # trained weights, not the initial ones
    assert run_both(model, env, tmp_path / "rooms.onnx", steps=45) == 45  # two meta-episodes and a start


def test_onnx_box_policy_returns_env_units(tmp_path):
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(WideBoxEnv, n_envs=2)
    model = tiny_model(env)
    model.learn(48)
    run_both(model, env, tmp_path / "box.onnx", steps=14)
