"""Invariants of the attention registries (window backends, feature maps) and of the package's
import boundary: what a new entry must satisfy to join the shared tests."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rehyat_jax import attention
from rehyat_jax.attention import (FEATURE_MAPS, WINDOW_BACKENDS, FeatureMapConfig, PhiParam, build_feature_map,
                                  check_window_settings, register_feature_map, register_window_backend)
from rehyat_jax.attention.window import (WindowBackend, WindowBackward, auto_backward_names, effective_backward, resolve_window_backend,
                                         window_backend_names)

PLATFORMS = ("cpu", "gpu", "tpu")
HEAD_DIMS = (8, 16, 24, 64, 128)


# --- window backends -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WINDOW_BACKENDS))
def test_every_entry_is_complete(name):
  entry = WINDOW_BACKENDS[name]
  assert entry.name == name and name != "auto"
  assert entry.backwards, name
  assert entry.default_backward == next(iter(entry.backwards))
  assert entry.summary and "\n" not in entry.summary
  assert callable(entry.forward)
  for backward in entry.backwards.values():
    assert isinstance(backward, WindowBackward) and backward.summary
    # Kernels name their dq/dk/dv implementation; plain XLA is differentiated by JAX.
    assert (backward.fn is not None) == entry.is_kernel
  if entry.is_kernel:
    assert entry.platforms and all(p in PLATFORMS for p in entry.platforms)


def test_exactly_one_plain_xla_entry():
  assert [name for name, entry in WINDOW_BACKENDS.items() if not entry.is_kernel] == ["xla"]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_auto_never_resolves_to_an_experimental_entry(monkeypatch, platform, head_dim):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  resolved = resolve_window_backend("auto", head_dim)
  assert resolved in WINDOW_BACKENDS and not WINDOW_BACKENDS[resolved].experimental
  tileable = head_dim >= 16 and head_dim & (head_dim - 1) == 0
  # Today: the fused Triton kernel on GPU for a tileable head dim, XLA everywhere else.
  assert resolved == ("pallas" if platform == "gpu" and tileable else "xla")


def test_auto_picks_the_first_stable_kernel_of_the_platform(monkeypatch):
  """A hypothetical CPU kernel is picked by 'auto' once it is not experimental, never before."""
  xla = WINDOW_BACKENDS["xla"]
  fake = lambda experimental: WindowBackend(
      name="fake_cpu_kernel", summary="test entry", forward=xla.forward,
      backwards={"xla": WindowBackward(lambda *a, **k: None, "test")}, platforms=("cpu",),
      experimental=experimental)
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  monkeypatch.setitem(WINDOW_BACKENDS, "fake_cpu_kernel", fake(True))
  assert resolve_window_backend("auto", 64) == "xla"
  monkeypatch.setitem(WINDOW_BACKENDS, "fake_cpu_kernel", fake(False))
  assert resolve_window_backend("auto", 64) == "fake_cpu_kernel"
  assert resolve_window_backend("auto", 8) == "xla"  # not tileable


def test_named_backend_resolves_to_itself():
  for name in WINDOW_BACKENDS:
    assert resolve_window_backend(name, 8) == name


def test_valid_settings_pass():
  for name, entry in WINDOW_BACKENDS.items():
    for backward in entry.backwards:
      check_window_settings(name, backward)
  for backward in auto_backward_names():
    check_window_settings("auto", backward)


def test_auto_refuses_experimental_backwards(monkeypatch):
  """A hypothetical experimental backward is refused with window_backend 'auto', accepted with
  the backend that offers it."""
  xla = WINDOW_BACKENDS["xla"]
  trial = dataclasses.replace(xla, name="trial_kernel", backwards={
      "xla": xla.backwards["xla"], "trial_bwd": WindowBackward(None, "trial", experimental=True)})
  monkeypatch.setitem(WINDOW_BACKENDS, "trial_kernel", trial)
  assert "trial_bwd" not in auto_backward_names()
  with pytest.raises(ValueError, match="window_backward 'trial_bwd' is experimental.*name the backend"):
    check_window_settings("auto", "trial_bwd")
  check_window_settings("trial_kernel", "trial_bwd")


def test_backward_auto_is_each_entrys_default():
  for name, entry in WINDOW_BACKENDS.items():
    check_window_settings(name, "auto")
    assert effective_backward(entry, "auto") == entry.default_backward
  check_window_settings("auto", "auto")
  # The fused backward kernels are the GPU kernel's default; XLA's own is autodiff.
  assert WINDOW_BACKENDS["pallas"].default_backward == "pallas"
  assert not WINDOW_BACKENDS["pallas"].backwards["pallas"].experimental


def test_unknown_backend_error_names_the_valid_ones():
  with pytest.raises(ValueError) as error:
    check_window_settings("pallas_bwd", "xla")
  assert "'pallas_bwd'" in str(error.value)
  for name in window_backend_names():
    assert repr(name) in str(error.value)
  with pytest.raises(ValueError, match="unknown window_backend"):
    resolve_window_backend("pallas_bwd", 64)


@pytest.mark.parametrize("window_backend", window_backend_names())
def test_unknown_backward_error_names_the_valid_ones(window_backend):
  offered = (auto_backward_names() if window_backend == "auto"
             else ("auto", *WINDOW_BACKENDS[window_backend].backwards))
  with pytest.raises(ValueError) as error:
    check_window_settings(window_backend, "flash")
  assert "'flash'" in str(error.value) and repr(window_backend) in str(error.value)
  for backward in offered:
    assert repr(backward) in str(error.value)


def test_a_backward_the_resolved_entry_lacks_falls_back_to_its_default():
  assert effective_backward(WINDOW_BACKENDS["pallas"], "pallas") == "pallas"
  assert effective_backward(WINDOW_BACKENDS["pallas"], "xla") == "xla"
  assert effective_backward(WINDOW_BACKENDS["pallas_tpu"], "pallas") == "xla"
  assert effective_backward(WINDOW_BACKENDS["xla"], "pallas") == "xla"


def test_register_rejects_taken_and_reserved_names():
  xla = WINDOW_BACKENDS["xla"]
  for name in ("xla", "auto"):
    with pytest.raises(ValueError, match="reserved or already registered"):
      register_window_backend(dataclasses.replace(xla, name=name))
  with pytest.raises(ValueError, match="offers no backward"):
    dataclasses.replace(xla, backwards={})


# --- feature maps ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(FEATURE_MAPS))
def test_feature_map_config_round_trips_and_hashes(kind):
  config = FeatureMapConfig(kind)
  as_dict = config.to_dict()
  assert as_dict["kind"] == kind
  assert FeatureMapConfig.from_dict(json.loads(json.dumps(as_dict))) == config
  assert hash(FeatureMapConfig.from_dict(as_dict)) == hash(config)
  assert len({config, FeatureMapConfig(kind), FeatureMapConfig.from_dict(as_dict)}) == 1
  for option in dataclasses.fields(FEATURE_MAPS[kind].options_type):
    assert getattr(config, option.name) == as_dict[option.name]


@pytest.mark.parametrize("kind", list(FEATURE_MAPS))
def test_every_kind_builds_a_phi_param_module_of_its_output_dim(kind):
  config = FeatureMapConfig(kind)
  heads, head_dim = 2, 8
  phi = build_feature_map(config, heads, head_dim, rngs=nnx.Rngs(0))
  assert isinstance(phi, FEATURE_MAPS[kind].module_type)
  assert not jax.tree.leaves(nnx.state(phi, nnx.Not(PhiParam)))  # every parameter is a PhiParam
  # The config is a static attribute: nnx.jit must hash it.
  out = nnx.jit(lambda m, x: m(x))(phi, jnp.ones((1, 3, heads, head_dim), jnp.bfloat16))
  # The registry contract: float32 for float32 input; bf16 input may give bf16 or float32.
  assert out.shape == (1, 3, heads, config.output_dim) and out.dtype in (jnp.bfloat16, jnp.float32)
  out32 = nnx.jit(lambda m, x: m(x))(phi, jnp.ones((1, 3, heads, head_dim), jnp.float32))
  assert out32.dtype == jnp.float32


def test_feature_map_config_options_and_errors():
  config = FeatureMapConfig(degree=2, hidden=32, feature_dim=16, activation="gelu", init_scale=0.1)
  assert config.kind == "mlp_power" and (config.degree, config.hidden, config.output_dim) == (2, 32, 32)
  assert config != dataclasses.replace(config, hidden=64)
  replaced = dataclasses.replace(config, init_scale=0.3)
  assert (replaced.degree, replaced.hidden, replaced.feature_dim, replaced.init_scale) == (2, 32, 16, 0.3)
  with pytest.raises(AttributeError, match="no attribute or option 'heads'"):
    _ = config.heads
  with pytest.raises(ValueError, match=r"unknown feature map kind 'fourier'; registered kinds: \['mlp_power'"):
    FeatureMapConfig.from_dict({"kind": "fourier"})
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] for feature map kind 'mlp_power'"):
    FeatureMapConfig.from_dict({"kind": "mlp_power", "width": 3})
  with pytest.raises(ValueError, match="unknown option"):
    FeatureMapConfig(width=3)
  # A missing kind is the default kind, as in the constructor.
  assert FeatureMapConfig.from_dict({"hidden": 32, "degree": 2, "feature_dim": 16, "activation": "gelu",
                                     "init_scale": 0.1}) == config
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.kind = "other"


def test_register_feature_map_rejects_a_taken_name():
  entry = FEATURE_MAPS["mlp_power"]
  with pytest.raises(ValueError, match="already registered"):
    register_feature_map("mlp_power", options=entry.options_type, summary="again")(entry.module_type)


# --- import boundary -------------------------------------------------------------------------

def test_attention_imports_only_core_and_itself():
  root = Path(attention.__file__).parent
  bad = []
  for path in sorted(root.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      for name in names:
        if name.startswith("rehyat_jax") and not name.startswith(("rehyat_jax.attention", "rehyat_jax.core")):
          bad.append(f"{path.relative_to(root)}: {name}")
  assert not bad, bad


def test_public_api():
  for name in ("WINDOW_BACKENDS", "FORMS", "FeatureMapConfig", "FEATURE_MAPS", "build_feature_map", "PhiParam",
               "softmax_attention", "SOFTMAX_BACKENDS", "ChunkGeometry", "make_geometry", "validate_hybrid_inputs",
               "joint_normalise", "DENOMINATOR_FLOOR", "PHI_LIMIT", "reference_hybrid_attention",
               "parallel_hybrid_attention", "recurrent_hybrid_attention", "hybrid_attention",
               "recurrent_chunk_step", "init_recurrent_state", "RecurrentState", "check_window_settings"):
    assert hasattr(attention, name), name
  assert attention.FORMS == ("reference", "parallel", "recurrent")
