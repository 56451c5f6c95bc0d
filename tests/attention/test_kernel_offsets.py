"""The Triton kernels address [B, N, H, D] arrays by element offsets; past 2^31 elements
(14B's H·D = 5120 at ≈ 420 k tokens, a long 720p video in the parallel form) 32-bit offsets
would wrap and read the wrong rows without any error.

Pallas's Triton lowering switches an array's offsets to 64 bits when it passes 2^32 bytes. These
tests lower the kernels for CUDA on the CPU (lowering is Python and MLIR; no GPU needed), read the
Triton IR and check that every tile of a large q/k/v/out/lin_num array is addressed with 64-bit
offsets, and that at the sizes we train today they are 32-bit (so the check can fail).
"""

import re

import jax
import jax.numpy as jnp
import pytest

from rehyat_jax.attention.window.band import WindowBand
from rehyat_jax.attention.window.kernel_common import WindowKernelConfig
from rehyat_jax.attention.window.triton_backward import fused_qkv_cotangents
from rehyat_jax.attention.window.triton_forward import triton_window_forward

lowering = pytest.importorskip("jax._src.pallas.triton.lowering")

HEADS, HEAD_DIM, TOKENS_PER_FRAME = 40, 128, 3600  # Wan2.1-14B at 720p
BAND = WindowBand(tokens_per_frame=TOKENS_PER_FRAME, chunk_frames=3, overlap_frames=1, key_shift_frames=0)
# A 2-D tile address: a tensor of pointers [rows, head dim] plus its offsets.
TILE_ADDRESS = re.compile(r"tt\.addptr .*: tensor<\d+x\d+x!tt\.ptr<\w+>>, tensor<\d+x\d+x(i32|i64)>")


@pytest.fixture
def triton_modules(monkeypatch):
  """The Triton IR of every pallas_call lowered while the fixture is active."""
  modules = []
  original = lowering.lower_jaxpr_to_triton_module

  def spy(*args, **kwargs):
    result = original(*args, **kwargs)
    modules.append(result.module.operation.get_asm())
    return result

  monkeypatch.setattr(lowering, "lower_jaxpr_to_triton_module", spy)
  return modules


def _operands(frames):
  n = frames * TOKENS_PER_FRAME
  big = lambda dtype: jax.ShapeDtypeStruct((1, n, HEADS, HEAD_DIM), dtype)
  rows = jax.ShapeDtypeStruct((1, n, HEADS), jnp.float32)
  return big(jnp.bfloat16), rows, big(jnp.float32)


def _forward(frames):
  qkv, rows, lin_num = _operands(frames)

  def run(q, k, v, num, den, floor):
    return triton_window_forward(q, k, v, num, den, floor, BAND, WindowKernelConfig(), interpret=False)

  return jax.jit(run).trace(qkv, qkv, qkv, lin_num, rows, jax.ShapeDtypeStruct((), jnp.int32))


def _backward(frames):
  qkv, rows, _ = _operands(frames)

  def run(q, k, v, floor, row_max, da, dn):
    return fused_qkv_cotangents(q, k, v, floor, row_max, da, dn, BAND, WindowKernelConfig(), interpret=False)

  return jax.jit(run).trace(qkv, qkv, qkv, jax.ShapeDtypeStruct((), jnp.int32), rows,
                            jax.ShapeDtypeStruct(qkv.shape, jnp.float32), rows)


def _tile_offset_types(traced, modules):
  modules.clear()
  traced.lower(lowering_platforms=("cuda",))
  assert modules, "no Triton kernel was lowered"
  return [{m.group(1) for m in TILE_ADDRESS.finditer(text)} for text in modules]


@pytest.mark.parametrize("build", [_forward, _backward], ids=["forward", "backward"])
def test_tiles_of_arrays_past_2_31_elements_use_64_bit_offsets(build, triton_modules):
  # 120 latent frames of 720p: 432,000 tokens, 2.2e9 elements per q/k/v, past 2^31.
  assert 120 * TOKENS_PER_FRAME * HEADS * HEAD_DIM > 2**31
  for kinds in _tile_offset_types(build(120), triton_modules):
    assert kinds == {"i64"}, kinds


@pytest.mark.parametrize("build", [_forward, _backward], ids=["forward", "backward"])
def test_tiles_of_todays_arrays_use_32_bit_offsets(build, triton_modules):
  # 21 latent frames (81 video frames) of 720p: 3.9e8 elements, offsets fit 32 bits.
  for kinds in _tile_offset_types(build(21), triton_modules):
    assert kinds == {"i32"}, kinds
