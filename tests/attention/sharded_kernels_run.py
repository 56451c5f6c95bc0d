"""Child process of test_kernel_sharding.py: 8 simulated CPU devices, a (2, 1, 4) mesh.

Prints one JSON line: errors of the Pallas kernels (every kernel entry of the window registry
with every backward it offers, and TPU splash) run per shard under ``jax.set_mesh`` against the
XLA forms on one device, and whether the kernels were wrapped in shard_map.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hybrid_cases import KERNEL_SETTINGS, XLA_WINDOW
from rehyat_jax.attention import parallel_hybrid_attention
from rehyat_jax.attention.softmax import splash_attention
from rehyat_jax.attention.window import WindowKernelConfig

jax.config.update("jax_enable_x64", False)
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 1, 4), ("data", "fsdp", "tensor"),
            axis_types=(AxisType.Auto,) * 3)
per_token = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
rng = np.random.default_rng(0)
kernel = WindowKernelConfig.uniform(16, num_warps=4, num_stages=2)


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def hybrid_case(heads, window_backend, window_backward):
  shape, phi_shape = (2, 5 * 8, heads, 16), (2, 5 * 8, heads, 8)
  args = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
  # Non-negative features: the denominator guard never engages. With signed ones, rows whose n_S + w lies
  # within round-off of the guard's floor take the other branch in a kernel than in XLA, and the gradient
  # jumps there (2.5e-5 on the phi gradients, one case, on some CPUs); this file tests the per-shard dispatch,
  # the kernels under an active guard are tested unsharded (test_adversarial.py).
  args += [np.abs(0.3 * rng.standard_normal(phi_shape)).astype(np.float32) for _ in range(2)]

  def form(window_backend, window_backward):
    return lambda *xs: parallel_hybrid_attention(*xs, tokens_per_frame=8, chunk_frames=2,
                                                 overlap_frames=1, causal=True,
                                                 window_backend=window_backend,
                                                 window_backward=window_backward, kernel_config=kernel)

  cotangent = rng.standard_normal(shape).astype(np.float32)

  def value_and_grads(fn):
    loss = lambda *xs: jnp.sum(fn(*xs) * cotangent)
    return jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=False)

  expected = jax.jit(value_and_grads(form(*XLA_WINDOW)))(*args)
  layout = per_token if heads % 4 == 0 else NamedSharding(mesh, P(("data", "fsdp")))
  sharded = [jax.device_put(x, layout) for x in args]
  with jax.set_mesh(mesh):
    actual = jax.jit(value_and_grads(form(window_backend, window_backward)))(*sharded)
    jaxpr = str(jax.make_jaxpr(form(window_backend, window_backward))(*sharded))
  errors = [rel(a, e) for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))]
  return {"max_error": max(errors), "errors": errors, "shard_map": "shard_map" in jaxpr,
          "grad_sharding": str(actual[1][0].sharding.spec)}


def splash_case():
  q, k, v = (rng.standard_normal((2, 128, 4, 16)).astype(np.float32) for _ in range(3))
  expected = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  sharded = [jax.device_put(x, per_token) for x in (q, k, v)]
  with jax.set_mesh(mesh):
    actual = jax.jit(splash_attention)(*sharded)
    jaxpr = str(jax.make_jaxpr(splash_attention)(*sharded))
  return {"max_error": rel(actual, expected), "shard_map": "shard_map" in jaxpr}


hybrid = {f"{backend}/{backward}": {"heads_4": hybrid_case(4, backend, backward),
                                     "heads_3": hybrid_case(3, backend, backward)}
          for backend, backward in KERNEL_SETTINGS}
print(json.dumps({"hybrid": hybrid, "splash": splash_case()}))
