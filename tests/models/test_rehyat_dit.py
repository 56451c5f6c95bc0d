"""ReHyAt inside the Wan DiT: converted blocks, teacher loading, and the whole-model recurrent forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rehyat_jax.attention import FORMS, WINDOW_BACKENDS
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig, PhiParam
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.models.params import canonical_params, load_params
from rehyat_jax.models.wan import RuntimeConfig, WanDiT

SMALL_PHI = FeatureMapConfig(hidden=8, feature_dim=4, init_scale=0.5)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def random_teacher_tree(seed=0, scale=0.3):
  model = WanDiT(WAN_TINY, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: (rng.standard_normal(a.shape) * scale).astype(np.float32),
                                canonical_params(model))


def inputs(frames, batch=2, h=4, w=6, seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return (f32(rng.standard_normal((batch, WAN_TINY.in_dim, frames, h, w))), f32(rng.uniform(0, 1000, (batch,))),
          f32(rng.standard_normal((batch, WAN_TINY.text_len, WAN_TINY.text_dim))))


def student(rehyat, scan_layers=True, tree=None, seed=1, form="parallel"):
  model = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=scan_layers, hybrid_form=form), rehyat, rngs=nnx.Rngs(seed))
  load_params(model, random_teacher_tree() if tree is None else tree)
  return model


@pytest.mark.parametrize("scan_layers,frames,chunk,overlap", [
    (True, 1, 2, 1), (True, 5, 2, 1), (True, 6, 3, 0), (True, 7, 2, 3), (False, 5, 2, 1), (False, 4, 4, 1)])
def test_recurrent_forward_equals_parallel_causal(scan_layers, frames, chunk, overlap):
  model = student(RehyatConfig(chunk_frames=chunk, overlap_frames=overlap, feature_map=SMALL_PHI), scan_layers)
  args = inputs(frames)
  parallel = model(*args)
  recurrent = model.recurrent_forward(*args)
  assert rel_err(recurrent, parallel) <= 1e-5


def test_student_with_whole_video_chunk_equals_teacher():
  """Tc >= F makes every converted block full softmax: the student is the teacher exactly."""
  tree = random_teacher_tree()
  teacher = WanDiT(WAN_TINY, rngs=nnx.Rngs(0))
  load_params(teacher, tree)
  args = inputs(3)
  for form in FORMS:
    model = student(RehyatConfig(chunk_frames=3, feature_map=SMALL_PHI), tree=tree, form=form)
    assert rel_err(model(*args), teacher(*args)) <= 1e-5, form


def test_converted_blocks_select_which_blocks_change():
  tree = random_teacher_tree()
  args = inputs(4)
  teacher = WanDiT(WAN_TINY, rngs=nnx.Rngs(0))
  load_params(teacher, tree)
  none = student(RehyatConfig(chunk_frames=1, converted_blocks=(), feature_map=SMALL_PHI), tree=tree)
  assert rel_err(none(*args), teacher(*args)) <= 1e-6
  mixed = student(RehyatConfig(chunk_frames=1, converted_blocks=(1,), feature_map=SMALL_PHI), tree=tree)
  assert rel_err(mixed(*args), teacher(*args)) > 1e-3  # block 1 really runs ReHyAt
  # scanned (lax.cond per layer) and unscanned (static) mixed stacks agree given the same phi
  scanned = student(RehyatConfig(chunk_frames=1, converted_blocks=(1,), feature_map=SMALL_PHI), True, tree)
  unscanned = student(RehyatConfig(chunk_frames=1, converted_blocks=(1,), feature_map=SMALL_PHI), False, tree)
  phi = nnx.to_pure_dict(nnx.state(scanned, PhiParam))["blocks"]["self_attn"]
  per_layer = {i: {"self_attn": jax.tree_util.tree_map(lambda a, i=i: a[i], phi)} for i in range(WAN_TINY.num_layers)}
  target = nnx.state(unscanned, PhiParam)
  nnx.replace_by_pure_dict(target, {"blocks": per_layer})
  nnx.update(unscanned, target)
  assert rel_err(scanned(*args), unscanned(*args)) <= 1e-5


def test_student_loads_teacher_checkpoint_and_keeps_fresh_phi():
  tree = random_teacher_tree()
  model = student(RehyatConfig(feature_map=SMALL_PHI), tree=tree)
  np.testing.assert_array_equal(canonical_params(model)["blocks"]["ffn"]["fc1"]["kernel"],
                                tree["blocks"]["ffn"]["fc1"]["kernel"])
  phi = jax.tree_util.tree_leaves(nnx.state(model, PhiParam))
  assert len(phi) == 8  # w1, b1, w2, b2 for phi_q and phi_k, stacked over layers
  assert all(leaf.shape[0] == WAN_TINY.num_layers for leaf in phi)
  bad = dict(tree, head={"modulation": tree["head"]["modulation"]})
  with pytest.raises(ValueError, match="missing .*head"):
    load_params(model, bad)


def test_recurrent_forward_refuses_mixed_or_noncausal_models():
  args = inputs(4)
  mixed = student(RehyatConfig(converted_blocks=(0,), feature_map=SMALL_PHI))
  with pytest.raises(ValueError, match=r"full-softmax blocks \[1\]"):
    mixed.recurrent_forward(*args)
  noncausal = student(RehyatConfig(causal=False, feature_map=SMALL_PHI))
  with pytest.raises(ValueError, match="causal=False"):
    noncausal.recurrent_forward(*args)
  teacher = WanDiT(WAN_TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="no ReHyAt config"):
    teacher.recurrent_forward(*args)


def test_rehyat_config_errors_name_the_field():
  with pytest.raises(ValueError, match="unknown block ids \\[7\\]"):
    RehyatConfig(converted_blocks=(0, 7)).converted_mask(2)
  with pytest.raises(ValueError, match="count 3 is outside"):
    RehyatConfig(converted_blocks=3).converted_mask(2)
  with pytest.raises(ValueError, match="chunk_frames"):
    RehyatConfig(chunk_frames=0)
  with pytest.raises(ValueError, match="overlap_frames"):
    RehyatConfig(overlap_frames=-1)
  with pytest.raises(ValueError, match="causal"):
    WanDiT(WAN_TINY, RuntimeConfig(hybrid_form="recurrent"), RehyatConfig(causal=False, feature_map=SMALL_PHI),
           rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="converted_blocks"):
    RehyatConfig(converted_blocks="1,x")
  with pytest.raises(ValueError, match="converted_blocks is empty text"):
    RehyatConfig(converted_blocks=" ")
  assert RehyatConfig(converted_blocks="1, 5").converted_blocks == (1, 5)
  assert RehyatConfig(converted_blocks="15").converted_blocks == 15
  assert RehyatConfig(converted_blocks=15).converted_mask(30).count(True) == 15
  assert RehyatConfig(converted_blocks=2).converted_mask(30) == (True,) + (False,) * 28 + (True,)


def _temp_bytes(fn, model, *args):
  graphdef, state = nnx.split(model)
  pure = lambda state, *a: getattr(nnx.merge(graphdef, state), fn)(*a)
  compiled = jax.jit(pure).lower(state, *args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_recurrent_forward_memory_does_not_grow_with_frames():
  """Measured, not assumed: compiled temporary buffers of the recurrent forward for 8/16/32 frames."""
  model = student(RehyatConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_PHI))
  rows = []
  for frames in (8, 16, 32):
    args = inputs(frames, batch=1, h=16, w=16)
    latent_bytes = args[0].size * 4
    rows.append((frames, latent_bytes, _temp_bytes("recurrent_forward", model, *args),
                 _temp_bytes("__call__", model, *args)))
  print("\nframes  latents(B)  recurrent temp(B)  parallel temp(B)")
  for row in rows:
    print("%6d  %10d  %17d  %16d" % row)
  (_, lat8, rec8, par8), _, (_, lat32, rec32, par32) = rows
  # no growth beyond the size of the latents themselves (the in-place output buffer)
  assert rec32 - rec8 <= lat32 - lat8, rows
  assert par32 - par8 > 2 * (lat32 - lat8), rows  # the parallel form does grow: the test can tell


@pytest.mark.parametrize("window_backend,chunks_per_step", [("xla", 2)] + [(name, None) for name in WINDOW_BACKENDS])
def test_runtime_window_options_keep_the_output(window_backend, chunks_per_step):
  """RuntimeConfig's window choices (chunk-grouped XLA scores; the fused kernel, interpret mode
  here) change how the parallel student runs, not what it computes."""
  rehyat = RehyatConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_PHI)
  tree = random_teacher_tree()
  plain = WanDiT(WAN_TINY, RuntimeConfig(window_backend="xla"), rehyat, rngs=nnx.Rngs(1))
  varied = WanDiT(WAN_TINY, RuntimeConfig(window_backend=window_backend,
                                          window_chunks_per_step=chunks_per_step), rehyat,
                  rngs=nnx.Rngs(1))
  for model in (plain, varied):
    load_params(model, tree)
  args = inputs(5)
  assert rel_err(varied(*args), plain(*args)) <= 1e-5


@pytest.mark.parametrize("field,value", [("window_backend", "cudnn"), ("softmax_backend", "pallas"),
                                         ("window_chunks_per_step", 0), ("hybrid_form", "scan"),
                                         ("window_backward", "triton")])
def test_runtime_config_rejects_bad_attention_options(field, value):
  with pytest.raises(ValueError, match=field):
    RuntimeConfig(**{field: value})


@pytest.mark.parametrize("scan_layers", [True, False])
def test_run_time_converted_mask_equals_the_static_choice(scan_layers):
  # One compiled program with the converted blocks as a traced input computes, for each choice, what a model
  # built with that choice computes (the same phi: both models share one student's weights).
  tree, args = random_teacher_tree(), inputs(4)
  every = student(RehyatConfig(chunk_frames=1, feature_map=SMALL_PHI), scan_layers, tree)
  graphdef, state = nnx.split(every)
  traces = []

  @jax.jit
  def run(state, mask):
    traces.append(1)
    return nnx.merge(graphdef, state)(*args, converted=mask)

  for blocks in [(), (0,), (1,), (0, 1)]:
    static = student(RehyatConfig(chunk_frames=1, converted_blocks=blocks, feature_map=SMALL_PHI), scan_layers, tree)
    nnx.update(static, nnx.state(every, PhiParam))
    mask = jnp.asarray([i in blocks for i in range(WAN_TINY.num_layers)])
    assert rel_err(run(state, mask), static(*args)) <= 1e-5, blocks
  assert len(traces) == 1


def test_run_time_converted_mask_errors():
  args = inputs(2)
  with pytest.raises(ValueError, match="needs a ReHyAt student"):
    WanDiT(WAN_TINY, rngs=nnx.Rngs(0))(*args, converted=jnp.ones(WAN_TINY.num_layers, bool))
  with pytest.raises(ValueError, match=r"must be \[2\] bools"):
    student(RehyatConfig(chunk_frames=1, feature_map=SMALL_PHI))(*args, converted=jnp.ones(3, bool))


def test_feature_map_backend_pallas_runs_the_fused_phi_kernel():
  """RuntimeConfig(feature_map_backend='pallas'): a bf16 student whose phi_q, phi_k run through the fused
  kernel (Pallas interpret mode here) agrees with the XLA map's student to bf16 round-off, and its
  compiled forward holds the kernel (so the setting is not silently ignored)."""
  cfg = dataclasses.replace(WAN_TINY, dim=64, ffn_dim=64, num_heads=4)   # head_dim 16: tileable
  rehyat = RehyatConfig(chunk_frames=2, overlap_frames=1,
                        feature_map=FeatureMapConfig(hidden=16, feature_dim=16, init_scale=0.5))
  outs, jaxprs = {}, {}
  for backend in ("xla", "pallas"):
    model = WanDiT(cfg, RuntimeConfig(precision="bf16", feature_map_backend=backend), rehyat, rngs=nnx.Rngs(3))
    args = inputs(3)
    outs[backend] = np.asarray(model(*args), np.float32)
    jaxprs[backend] = str(jax.make_jaxpr(lambda *a: model(*a))(*args))
  assert "rehyat_phi_mlp_power" in jaxprs["pallas"] and "rehyat_phi_mlp_power" not in jaxprs["xla"]
  assert rel_err(outs["pallas"], outs["xla"]) <= 3e-2
  with pytest.raises(ValueError, match="feature_map_backend"):
    RuntimeConfig(feature_map_backend="triton")
