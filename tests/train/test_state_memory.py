"""Per-device bytes of a run's state (train.memory), on abstract meshes, and the check against a device."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from configs import tiny
from rehyat_jax.train.config_checks import stage_of
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.memory import (bytes_per_device, check_state_fits, memory_line, planned_state_bytes,
                                     readable_bytes, state_bytes)
from rehyat_jax.train.setup import TrainState, build_model

MESH = AbstractMesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
SPLIT, WHOLE = NamedSharding(MESH, P("fsdp", None)), NamedSharding(MESH, P())


def test_sharded_leaves_count_their_shard_and_replicated_ones_count_whole():
  tree = {"w": jax.ShapeDtypeStruct((8, 3), jnp.float32), "b": jax.ShapeDtypeStruct((5,), jnp.bfloat16)}
  assert bytes_per_device(tree, {"w": SPLIT, "b": WHOLE}) == 8 // 4 * 3 * 4 + 5 * 2


def test_a_sharding_tree_that_does_not_match_is_an_error():
  with pytest.raises(ValueError, match="2 arrays but 1 shardings"):
    bytes_per_device({"a": jnp.zeros(2), "b": jnp.zeros(2)}, {"a": WHOLE})


def test_prng_key_leaves_count_their_key_data():
  fry = jax.eval_shape(lambda: jax.random.split(jax.random.key(0, impl="threefry2x32"), 8))
  rbg = jax.eval_shape(lambda: jax.random.split(jax.random.key(0, impl="rbg"), 8))
  # threefry keys are two uint32 words, rbg keys four
  assert bytes_per_device({"a": fry, "b": rbg}, {"a": WHOLE, "b": WHOLE}) == 8 * 2 * 4 + 8 * 4 * 4


def test_the_line_lists_each_part():
  leaf = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)  # 4 MiB whole, 1 MiB per fsdp shard
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), trainable={"w": leaf}, opt_state=({"w": leaf},),
                     ema={})
  placed = TrainState(step=WHOLE, trainable={"w": SPLIT}, opt_state=({"w": SPLIT},), ema={})
  line = memory_line(state_bytes(state, placed, {"f": leaf}, {"f": WHOLE}))
  assert line.startswith("state per device: 6.00 MiB (trainable 1.00 MiB, optimizer 1.00 MiB, frozen 4.00 MiB)")
  assert readable_bytes(3 * 2**30 // 2) == "1.50 GiB" and readable_bytes(12) == "12 B"


@pytest.mark.parametrize("stage", ["distill", "finetune"])
def test_the_plan_is_what_the_built_run_holds(stage):
  # Independent of the plan's abstract path: count the real model's parameters, stage by stage.
  cfg = tiny.get_config(stage)
  planned = planned_state_bytes(cfg, AbstractMesh((1,), ("fsdp",), axis_types=(AxisType.Auto,)))
  model = build_model(cfg)
  _, trainable, frozen = nnx.split(model, stage_of(cfg).trainable_filter(cfg), ...)
  size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  assert planned["trainable"] == size(trainable) > 0 and planned["frozen"] == size(frozen)
  # adamw keeps two moments per trainable parameter (plus scalar counts)
  assert 2 * size(trainable) <= planned["optimizer"] <= 2 * size(trainable) + 64


class FakeDevice:
  device_kind = "Fake GPU"

  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {"bytes_limit": self.limit} if self.limit else None


def test_a_state_larger_than_the_device_stops_the_run_with_the_figures():
  parts = {"trainable": 3 * 2**30, "optimizer": 6 * 2**30, "ema": 0, "frozen": 2**30}
  with pytest.raises(ConfigError, match=r"state per device: 10\.00 GiB .* more than the 8\.00 GiB one Fake GPU "
                                        r"offers.*mesh\.fsdp.*plan_memory"):
    check_state_fits(parts, FakeDevice(8 * 2**30))
  check_state_fits(parts, FakeDevice(16 * 2**30))
  check_state_fits(parts, FakeDevice(None))  # CPU: no limit reported, nothing to check
