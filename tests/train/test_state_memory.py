"""Per-device bytes of a run's state (train.setup.bytes_per_device / state_memory_line), on abstract meshes."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from rehyat_jax.train.setup import TrainState, bytes_per_device, readable_bytes, state_memory_line

MESH = AbstractMesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
SPLIT, WHOLE = NamedSharding(MESH, P("fsdp", None)), NamedSharding(MESH, P())


def test_sharded_leaves_count_their_shard_and_replicated_ones_count_whole():
  tree = {"w": jax.ShapeDtypeStruct((8, 3), jnp.float32), "b": jax.ShapeDtypeStruct((5,), jnp.bfloat16)}
  assert bytes_per_device(tree, {"w": SPLIT, "b": WHOLE}) == 8 // 4 * 3 * 4 + 5 * 2


def test_a_sharding_tree_that_does_not_match_is_an_error():
  with pytest.raises(ValueError, match="2 arrays but 1 shardings"):
    bytes_per_device({"a": jnp.zeros(2), "b": jnp.zeros(2)}, {"a": WHOLE})


def test_the_line_lists_each_part():
  leaf = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)  # 4 MiB whole, 1 MiB per fsdp shard
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), trainable={"w": leaf}, opt_state=({"w": leaf},),
                     ema={})
  placed = TrainState(step=WHOLE, trainable={"w": SPLIT}, opt_state=({"w": SPLIT},), ema={})
  line = state_memory_line(state, placed, {"f": leaf}, {"f": WHOLE})
  assert line.startswith("state per device: 6.00 MiB (trainable 1.00 MiB, optimizer 1.00 MiB, frozen 4.00 MiB)")
  assert readable_bytes(3 * 2**30 // 2) == "1.50 GiB" and readable_bytes(12) == "12 B"


def test_prng_key_leaves_count_their_key_data():
  fry = jax.eval_shape(lambda: jax.random.split(jax.random.key(0, impl="threefry2x32"), 8))
  rbg = jax.eval_shape(lambda: jax.random.split(jax.random.key(0, impl="rbg"), 8))
  # threefry keys are two uint32 words, rbg keys four
  assert bytes_per_device({"a": fry, "b": rbg}, {"a": WHOLE, "b": WHOLE}) == 8 * 2 * 4 + 8 * 4 * 4
