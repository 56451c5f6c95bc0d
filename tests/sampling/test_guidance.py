"""Classifier-free guidance and the Wan defaults."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from rehyat_jax import sampling


def test_cfg_combine():
  rng = np.random.default_rng(0)
  cond, uncond = (rng.standard_normal((2, 5)).astype(np.float32) for _ in range(2))
  np.testing.assert_array_equal(sampling.cfg_combine(cond, uncond, 0.0), uncond)
  np.testing.assert_allclose(sampling.cfg_combine(cond, uncond, 1.0), cond, atol=1e-6)
  out = sampling.cfg_combine(jnp.asarray(cond), jnp.asarray(uncond), 5.0)
  np.testing.assert_array_equal(np.asarray(out), uncond + np.float32(5.0) * (cond - uncond))
  np.testing.assert_array_equal(sampling.cfg_combine(np.float32(3), np.float32(1), 6.0), 13)


def test_negative_prompts_are_exact():
  zh = sampling.WAN_NEGATIVE_PROMPT
  assert zh.startswith("色调艳丽，过曝，静态") and zh.endswith("三条腿，背景人很多，倒着走")
  assert len(zh) == 137 and zh.count("，") == 27 and "," not in zh and zh == zh.strip()
  assert hashlib.sha256(zh.encode()).hexdigest() == (
      "ce96e0324e4b54ce4b6e867f669ca520952e1a34cc116543516b1897f0d3c47e")
  # The English one is diffusers' Wan example verbatim (read as text: importing the pipeline is slow).
  diffusers_dir = Path(importlib.util.find_spec("diffusers").origin).parent
  source = (diffusers_dir / "pipelines" / "wan" / "pipeline_wan_i2v.py").read_text(encoding="utf-8")
  assert f'"{sampling.WAN_NEGATIVE_PROMPT_EN}"' in source


def test_wan_t2v_defaults():
  assert sampling.WAN_T2V_SAMPLING_STEPS == 50
  assert sampling.WAN_T2V_GUIDANCE_SCALE == 5.0 and sampling.WAN_T2V_SHIFT == 5.0
  assert sampling.WAN_T2V_1_3B_GUIDANCE_SCALE == 6.0
  assert sampling.WAN_T2V_1_3B_SHIFT_RANGE == (8.0, 12.0)
