"""Child process of test_sequence_parallel.py: 8 simulated CPU devices.

Prints one JSON line:
  cases   per case, the largest relative error of the sequence-parallel form (``hybrid_attention``
          under a mesh with a "sequence" axis) against the parallel form on one device, output and
          the gradients of all five inputs together, and which collectives its program holds;
  comm    bytes the traced program's all_gather (linear state) and ppermute (halo) move per device,
          next to ``linear_state_bytes`` / ``halo_bytes``, at two frame counts;
  errors  the messages of the frame counts that do not split into whole chunks per device.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh

from hybrid_cases import TEST_KERNEL, XLA_WINDOW, jit_fast, normal, relative_error
from rehyat_jax.attention import hybrid_attention, linear_state_bytes, parallel_hybrid_attention
from rehyat_jax.attention.sequence_parallel import halo_bytes

jax.config.update("jax_enable_x64", False)
BATCH, HEADS, HEAD_DIM, PHI_DIM, HW = 2, 2, 8, 4, 2


def make_mesh(data, fsdp, sequence, tensor):
  devices = np.asarray(jax.devices()[:data * fsdp * sequence * tensor])
  return Mesh(devices.reshape(data, fsdp, sequence, tensor), ("data", "fsdp", "sequence", "tensor"),
              axis_types=(AxisType.Auto,) * 4)


def inputs(frames, seed, dtype=jnp.float32):
  n = frames * HW
  qkv = [normal(seed + i, (BATCH, n, HEADS, HEAD_DIM)) for i in range(3)]
  phi = [normal(seed + 3 + i, (BATCH, n, HEADS, PHI_DIM), 0.3) for i in range(2)]
  cotangent = normal(seed + 5, (BATCH, n, HEADS, HEAD_DIM))
  return [jnp.asarray(x, dtype) for x in qkv + phi], jnp.asarray(cotangent, dtype)


def output_and_grads(attention, cotangent):
  """One program: the output and the gradients of <output, cotangent> w.r.t. q, k, v, phi_q, phi_k."""
  def run(*xs):
    out, vjp = jax.vjp(attention, *xs)
    return out, vjp(cotangent)
  return jit_fast(run)


def collectives(fn, args):
  text = str(jax.make_jaxpr(fn)(*args))
  return {name: name in text for name in ("shard_map", "ppermute", "all_gather", "pallas_call")}


_expected = {}


def case(frames, chunk_frames, overlap_frames, causal, mesh_shape, *, dtype=jnp.float32,
         window=XLA_WINDOW, seed=0):
  chunking = dict(tokens_per_frame=HW, chunk_frames=chunk_frames, overlap_frames=overlap_frames,
                  causal=causal)
  args, cotangent = inputs(frames, seed, dtype)
  key = (frames, chunk_frames, overlap_frames, causal, dtype, seed)
  if key not in _expected:  # one device, the plain-XLA window
    single = lambda *xs: parallel_hybrid_attention(*xs, window_backend=XLA_WINDOW[0],
                                                   window_backward=XLA_WINDOW[1], **chunking)
    _expected[key] = output_and_grads(single, cotangent)(*args)
  split = lambda *xs: hybrid_attention(*xs, window_backend=window[0], window_backward=window[1],
                                       kernel_config=TEST_KERNEL, **chunking)
  with jax.set_mesh(make_mesh(*mesh_shape)):
    actual = output_and_grads(split, cotangent)(*args)
    found = collectives(split, args)
  errors = [relative_error(a, e) for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(_expected[key]))]
  return {"max_error": max(errors), "errors": errors, "dtype": jnp.dtype(dtype).name, **found}


def traced_bytes(frames, overlap_frames, causal, sequence):
  """Bytes per device of the all_gather and ppermute operands in the traced program, x the peers
  an all_gather operand reaches (sequence - 1)."""
  args, _ = inputs(frames, 0)
  fn = lambda *xs: hybrid_attention(*xs, tokens_per_frame=HW, chunk_frames=1, overlap_frames=overlap_frames,
                                    causal=causal, window_backend=XLA_WINDOW[0])
  with jax.set_mesh(make_mesh(1, 1, sequence, 1)):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  moved = {"all_gather": 0, "ppermute": 0}

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in moved:
        size = sum(v.aval.size * v.aval.dtype.itemsize for v in eqn.invars)
        moved[eqn.primitive.name] += size * ((sequence - 1) if eqn.primitive.name == "all_gather" else 1)
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", param)
        if hasattr(inner, "eqns"):
          walk(inner)
  walk(jaxpr)
  # ppermute ships To frames of k, v, phi_k to every device but the first: the per-device bytes.
  expected = {"all_gather": linear_state_bytes(batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, phi_dim=PHI_DIM,
                                               num_devices=sequence, causal=causal),
              "ppermute": halo_bytes(batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, phi_dim=PHI_DIM,
                                     overlap_frames=overlap_frames, tokens_per_frame=HW, itemsize=4)}
  return {"traced": moved, "expected": expected}


def split_error(frames, chunk_frames, sequence):
  args, _ = inputs(frames, 0)
  try:
    with jax.set_mesh(make_mesh(1, 1, sequence, 1)):
      jax.eval_shape(lambda *xs: hybrid_attention(*xs, tokens_per_frame=HW, chunk_frames=chunk_frames,
                                                  overlap_frames=1, causal=True), *args)
  except ValueError as e:
    return str(e)
  return None


cases = {
    # To < Tc, batch over data: 2 frames (one chunk) per device.
    "tc2_to1_causal_seq4": case(8, 2, 1, True, (2, 1, 4, 1)),
    # Non-causal, with batch over fsdp and heads over tensor around the sequence axis.
    "tc2_to1_noncausal_seq2_fsdp2_tensor2": case(8, 2, 1, False, (1, 2, 2, 2)),
    # To = 0.
    "tc2_to0_noncausal_seq4": case(8, 2, 0, False, (2, 1, 4, 1)),
    # To > Tc and To > frames per device: the halo comes from 3 devices back.
    "tc1_to3_causal_seq8": case(8, 1, 3, True, (1, 1, 8, 1)),
    "tc1_to3_noncausal_seq8": case(8, 1, 3, False, (1, 1, 8, 1)),
    # To = Tc, two chunks per device.
    "tc2_to2_causal_seq2": case(8, 2, 2, True, (2, 1, 2, 2)),
    "bf16_tc2_to1_causal_seq4": case(8, 2, 1, True, (2, 1, 4, 1), dtype=jnp.bfloat16),
    # The Pallas kernels (interpret mode on CPU) inside the sequence-parallel shard_map.
    "pallas_pallas_tc2_to1_causal_seq4": case(8, 2, 1, True, (2, 1, 4, 1), window=("pallas", "pallas")),
    "pallas_tpu_xla_tc2_to1_causal_seq4": case(8, 2, 1, True, (2, 1, 4, 1), window=("pallas_tpu", "xla")),
}
comm = {f"frames_{frames}_{'causal' if causal else 'noncausal'}": traced_bytes(frames, 1, causal, 4)
        for frames in (8, 16) for causal in (True, False)}
errors = {"frames_6_tc2_seq4": split_error(6, 2, 4), "frames_8_tc3_seq2": split_error(8, 3, 2),
          "frames_8_tc2_seq4": split_error(8, 2, 4)}
print(json.dumps({"cases": cases, "comm": comm, "errors": errors}))
