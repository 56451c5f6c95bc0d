"""Inside the DiT, phi_q sees q and phi_k sees k after Wan's q/k RMSNorm and after 3D RoPE (docs/method.md §2,
``phi_input='post_rope'``), in the student's forward and in the stage-1 distillation forward.

What the feature maps receive is captured at the feature map itself; the expected value is computed here from
the block's self-attention input: the block's own q/k projection and RMSNorm (trusted layers), then RoPE as the
original Wan2.1 ``rope_apply`` defines it (tests/numpy_hybrid.py), not the library's RoPE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numpy_hybrid
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig, build_feature_map
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.models.wan import RuntimeConfig, SelfAttention, WanDiT
from rehyat_jax.train.stages.distill import distillation_attention

# head_dim 24: RoPE gives t, h and w 8 channels each, so a mix-up of axes would show.
CONFIG = dataclasses.replace(WAN_TINY, dim=48, num_heads=2)
GRID = (3, 2, 3)  # latent frames, patch rows, patch columns
STUDENT = RehyatConfig(chunk_frames=1, overlap_frames=0, feature_map=FeatureMapConfig(hidden=4, feature_dim=2))


def record(seen: dict, kind: str, module, x) -> None:
  """Sends ``x`` to the host under the tag ``tag_modules`` gave ``module`` (works inside jit)."""
  jax.debug.callback(lambda value, tag=module.capture_tag: seen[kind].append((tag, np.asarray(value))), x,
                     ordered=True)


@pytest.fixture
def capture(monkeypatch):
  """Records (tag, input) of every feature-map call and (tag, input x) of every self-attention call."""
  seen = {"phi": [], "attention": []}
  feature_map_type = type(build_feature_map(STUDENT.feature_map, 1, 8, rngs=nnx.Rngs(0)))
  original_map, original_attention = feature_map_type.__call__, SelfAttention.__call__

  def map_call(self, x, **kwargs):
    record(seen, "phi", self, x)
    return original_map(self, x, **kwargs)

  def attention_call(self, x, *args, **kwargs):
    record(seen, "attention", self, x)
    return original_attention(self, x, *args, **kwargs)

  monkeypatch.setattr(feature_map_type, "__call__", map_call)
  monkeypatch.setattr(SelfAttention, "__call__", attention_call)
  return seen


def tag_modules(model) -> None:
  """Names every self-attention and feature map (static attributes: they survive nnx.split / merge)."""
  for i, block in enumerate(model.blocks):
    block.self_attn.capture_tag = f"{i}"
    block.self_attn.phi_q.capture_tag = f"{i}/q"
    block.self_attn.phi_k.capture_tag = f"{i}/k"


def build_student(student: RehyatConfig) -> WanDiT:
  """The student with random weights filled in from NumPy (initialising it op by op compiles every op)."""
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: WanDiT(CONFIG, RuntimeConfig(scan_layers=False), student, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), nnx.to_pure_dict(state)))
  model = nnx.merge(graphdef, state)
  tag_modules(model)
  return model


def jitted(model, method):
  """``method(model, *inputs)`` compiled (a forward run op by op would spend minutes compiling each op)."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, *inputs: method(nnx.merge(graphdef, state), *inputs))
  return lambda *inputs: jax.block_until_ready(run(state, *inputs))


def model_inputs(seed=0):
  rng = np.random.default_rng(seed)
  frames, rows, cols = GRID
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  latents = rng.standard_normal((1, CONFIG.in_dim, frames, 2 * rows, 2 * cols))
  return f32(latents), f32([500.0]), f32(rng.standard_normal((1, CONFIG.text_len, CONFIG.text_dim)))


def expected_inputs(attn, x) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'q' / 'k': (after RMSNorm and Wan's RoPE, after RMSNorm only)} for the attention input ``x``."""
  out = {}
  for name, project, norm in (("q", attn.q, attn.norm_q), ("k", attn.k, attn.norm_k)):
    normed = np.asarray(norm(project(jnp.asarray(x))), np.float64)
    normed = normed.reshape(*x.shape[:2], CONFIG.num_heads, CONFIG.head_dim)
    out[name] = (numpy_hybrid.wan_rope(normed, GRID, CONFIG.rope_theta), normed)
  return out


def check_captured(seen, model, phi_input: str) -> None:
  attentions = dict(seen["attention"])
  phi_calls = dict(seen["phi"])
  assert len(seen["phi"]) == len(phi_calls) == 2 * CONFIG.num_layers  # phi_q, phi_k of every converted block
  checked = 0
  for i, block in enumerate(model.blocks):
    attn = block.self_attn
    post_rope, pre_rope = zip(*expected_inputs(attn, attentions[f"{i}"]).values())
    for axis, want_post, want_pre in zip("qk", post_rope, pre_rope):
      seen_input = phi_calls[f"{i}/{axis}"]
      want, other = (want_post, want_pre) if phi_input == "post_rope" else (want_pre, want_post)
      np.testing.assert_allclose(seen_input, want, rtol=0, atol=2e-5 * np.abs(want).max())
      # RoPE moves the inputs far beyond the tolerance: the check tells the two apart.
      assert np.abs(other - want).max() > 0.1 * np.abs(want).max()
      checked += 1
  assert checked == 2 * CONFIG.num_layers


@pytest.mark.parametrize("phi_input", ["post_rope", "pre_rope"])
def test_student_forward_feeds_phi_the_rotated_q_and_k(capture, phi_input):
  student = dataclasses.replace(STUDENT, phi_input=phi_input)
  model = build_student(student)
  jitted(model, WanDiT.__call__)(*model_inputs())
  check_captured(capture, model, phi_input)


def test_distillation_forward_feeds_phi_the_rotated_q_and_k(capture):
  """Stage 1's hook (``distill_forward`` runs the model with ``distillation_attention``)."""
  model = build_student(STUDENT)

  def recording_hook(attn, x, *args):
    record(capture, "attention", attn, x)
    return distillation_attention(attn, x, *args)

  jitted(model, lambda m, *inputs: m.forward_with_hook(*inputs, recording_hook))(*model_inputs())
  check_captured(capture, model, "post_rope")
