"""One recurrent denoising step (two chunk-by-chunk DiT passes for CFG + the solver update) has flat
compiled temporary memory in the video length; the parallel student's grows. Measured, not assumed."""

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.models.wan import WanDiT
from rehyat_jax.sampling.guidance import cfg_combine
from rehyat_jax.sampling.solvers import euler_step


def step_temp_bytes(model, frames: int, recurrent: bool) -> tuple[int, int]:
  graphdef, state = nnx.split(model)

  def one_step(state, x, text, negative):
    dit = nnx.merge(graphdef, state)
    forward = dit.recurrent_forward if recurrent else dit
    t = jnp.full((x.shape[0],), 500.0)
    flow = cfg_combine(forward(x, t, text), forward(x, t, negative), 5.0)
    return euler_step(x, flow, 0.5, 0.4)

  x = jax.ShapeDtypeStruct((1, WAN_TINY.in_dim, frames, 16, 16), jnp.float32)
  text = jax.ShapeDtypeStruct((1, WAN_TINY.text_len, WAN_TINY.text_dim), jnp.float32)
  compiled = jax.jit(one_step).lower(state, x, text, text).compile()
  return compiled.memory_analysis().temp_size_in_bytes, 4 * WAN_TINY.in_dim * frames * 16 * 16


def test_recurrent_denoising_step_memory_is_flat():
  rehyat = RehyatConfig(chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(hidden=8, feature_dim=4))
  model = WanDiT(WAN_TINY, rehyat=rehyat, rngs=nnx.Rngs(0))
  rows = [(f, *step_temp_bytes(model, f, True), step_temp_bytes(model, f, False)[0]) for f in (8, 16, 32)]
  print("\nframes  latents(B)  recurrent step temp(B)  parallel step temp(B)")
  for frames, rec, lat, par in rows:
    print(f"{frames:6d}  {lat:10d}  {rec:21d}  {par:21d}")
  (_, rec8, lat8, par8), _, (_, rec32, lat32, par32) = rows
  # Beyond buffers the size of the latents (x, the two flows, the update), nothing grows with length.
  assert rec32 - rec8 <= 4 * (lat32 - lat8), rows
  assert par32 - par8 > 8 * (lat32 - lat8), rows
