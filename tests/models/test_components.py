"""Component parity of the Wan DiT pieces against diffusers, and structural properties of the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.embeddings import Timesteps
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from flax import nnx

from rehyat_jax.models import rope as rope_lib
from rehyat_jax.models.config import WAN_TINY, WanConfig
from rehyat_jax.models.layers import sinusoidal_embedding
from rehyat_jax.models.params import canonical_params, load_params
from rehyat_jax.models.wan import RuntimeConfig, WanDiT


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("head_dim,grid", [(128, (3, 4, 5)), (12, (5, 3, 4)), (4, (2, 2, 3)), (64, (7, 2, 2))])
def test_axis_split_matches_diffusers(head_dim, grid):
  torch_rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=32)
  assert rope_lib.axis_dims(head_dim) == (torch_rope.t_dim, torch_rope.h_dim, torch_rope.w_dim)


@pytest.mark.parametrize("head_dim,grid", [(128, (3, 4, 5)), (12, (5, 3, 4)), (64, (7, 2, 2))])
def test_rope_matches_diffusers(head_dim, grid):
  f, h, w = grid
  torch_rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=32)
  cos, sin = torch_rope(torch.zeros(1, 1, f, h, w))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, f * h * w, 3, head_dim)).astype(np.float32)
  xt = torch.from_numpy(x)
  x1, x2 = xt.unflatten(-1, (-1, 2)).unbind(-1)
  c, s = cos[..., 0::2], sin[..., 1::2]
  ref = torch.empty_like(xt)
  ref[..., 0::2] = x1 * c - x2 * s
  ref[..., 1::2] = x1 * s + x2 * c
  ours = rope_lib.apply_rope(jnp.asarray(x), rope_lib.rope_tables(head_dim, grid))
  assert rel_err(ours, ref.numpy()) <= 1e-6


def test_rope_frame_offset_slices_the_full_table():
  full = rope_lib.rope_tables(128, (9, 2, 3))
  part = rope_lib.rope_tables(128, (3, 2, 3), frame_offset=4)
  np.testing.assert_array_equal(np.asarray(full.cos_t[4:7]), np.asarray(part.cos_t))
  np.testing.assert_array_equal(np.asarray(full.sin_t[4:7]), np.asarray(part.sin_t))


def test_rope_has_no_length_limit():
  tables = rope_lib.rope_tables(128, (4000, 1, 1))
  assert tables.cos_t.shape == (4000, 22)
  assert np.isfinite(np.asarray(tables.sin_t)).all()


@pytest.mark.parametrize("dim", [256, 32])
def test_time_embedding_matches_float64_original(dim):
  t = np.array([0, 1, 17, 500, 999, 1000, 3999], np.float32)
  half = dim // 2
  args = t.astype(np.float64)[:, None] * np.power(10000.0, -np.arange(half) / half)[None, :]
  original = np.concatenate([np.cos(args), np.sin(args)], axis=1)  # Wan's float64 sinusoidal_embedding_1d
  ours = np.asarray(sinusoidal_embedding(jnp.asarray(t), dim))
  assert np.abs(ours - original).max() <= 5e-7
  # diffusers computes the same in float32 and is off by up to ~ulp(1000) in the angle.
  ref = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.from_numpy(t[:6])).numpy()
  assert np.abs(ours[:6] - ref).max() <= 1e-4


def _inputs(cfg, batch=2, frames=3, h=4, w=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, cfg.in_dim, frames, h, w)).astype(np.float32)
  t = rng.integers(0, 1000, size=(batch,)).astype(np.float32)
  c = rng.standard_normal((batch, cfg.text_len, cfg.text_dim)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(t), jnp.asarray(c)


def _randomise(model, seed=1, scale=0.3):
  """Random values for every parameter (zero-initialised head and biases included)."""
  tree = canonical_params(model)
  rng = np.random.default_rng(seed)
  tree = jax.tree_util.tree_map(lambda a: (rng.standard_normal(a.shape) * scale).astype(np.float32), tree)
  load_params(model, tree)
  return tree


def test_scanned_equals_unscanned():
  scanned = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=True), rngs=nnx.Rngs(0))
  tree = _randomise(scanned)
  unscanned = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=False), rngs=nnx.Rngs(1))
  load_params(unscanned, tree)
  args = _inputs(WAN_TINY, frames=5)
  a, b = np.asarray(scanned(*args)), np.asarray(unscanned(*args))
  assert np.abs(a).max() > 0
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())
  for remat in ("full", "dots"):
    remat_model = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=True, remat=remat), rngs=nnx.Rngs(0))
    load_params(remat_model, tree)
    np.testing.assert_allclose(np.asarray(remat_model(*args)), a, rtol=0, atol=1e-6 * np.abs(a).max())


def test_remat_gradients_match():
  args = _inputs(WAN_TINY, frames=2)
  grads = []
  for remat in ("none", "full"):
    model = WanDiT(WAN_TINY, RuntimeConfig(remat=remat), rngs=nnx.Rngs(0))
    _randomise(model)
    loss = lambda m: jnp.mean(m(*args) ** 2)
    grads.append(nnx.grad(loss)(model))
  leaves = [jax.tree_util.tree_leaves(nnx.state(g)) for g in grads]
  assert len(leaves[0]) == len(leaves[1]) > 0
  for a, b in zip(*leaves):
    assert rel_err(a, b) <= 1e-5  # same math, different fusion: float32 round-off only


def test_bf16_policy_is_close_to_fp32():
  """bf16 matmuls with the float32 paths of the original stay within 3e-2 of fp32 (relative to max)."""
  ref_model = WanDiT(WAN_TINY, RuntimeConfig(precision="fp32"), rngs=nnx.Rngs(0))
  tree = _randomise(ref_model, scale=0.2)
  args = _inputs(WAN_TINY, frames=3)
  ref = np.asarray(ref_model(*args))
  for precision in ("bf16", "bf16_params"):
    model = WanDiT(WAN_TINY, RuntimeConfig(precision=precision), rngs=nnx.Rngs(0))
    load_params(model, tree)
    out = model(*args)
    assert out.dtype == jnp.float32
    err = rel_err(out, ref)
    assert 0 < err <= 3e-2, (precision, err)


def test_every_parameter_is_annotated():
  for scan in (True, False):
    model = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=scan), rngs=nnx.Rngs(0))
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(flat) == (15 + 27 * WAN_TINY.num_layers if not scan else 15 + 27)
    for path, var in flat:
      axes = var.get_metadata().get("out_sharding")
      assert axes is not None and len(axes) == var[...].ndim, (path, axes)
      if scan and path[0] == "blocks":
        assert axes[0] == "layers", path


def test_parameter_count_of_real_configs():
  from rehyat_jax.models.config import WAN_T2V_1_3B, WAN_T2V_14B
  for cfg, expected in ((WAN_T2V_1_3B, 1_418_996_800), (WAN_T2V_14B, 14_288_491_584)):
    abstract = nnx.eval_shape(lambda cfg=cfg: WanDiT(cfg, rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(abstract, nnx.Param)))
    assert count == expected


def test_bad_inputs_name_the_problem():
  model = WanDiT(WAN_TINY, rngs=nnx.Rngs(0))
  x, t, c = _inputs(WAN_TINY)
  with pytest.raises(ValueError, match="latents must be"):
    model(x[:, :2], t, c)
  with pytest.raises(ValueError, match="text embeddings must be"):
    model(x, t, c[..., :3])
  with pytest.raises(ValueError, match="timesteps must be"):
    model(x, t[:1], c)
  with pytest.raises(ValueError, match="not divisible by the patch size"):
    model(x[..., :5], t, c)
  with pytest.raises(ValueError, match="num_heads"):
    WanConfig(dim=30, ffn_dim=8, num_heads=4, num_layers=1)
