"""The umT5 converter: Wan's ``.pth`` layout and transformers' layout in both file formats, and its errors.

The Wan-layout state dicts here are built from the transformers model's module attributes (not from the
converter's key tables), so agreement checks the tables independently. Names follow Wan's
the original Wan2.1 release's ``wan/modules/t5.py`` (``T5Encoder`` with ``shared_pos=False``, as ``umt5_xxl`` builds it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx
from transformers import UMT5Config as HFUMT5Config
from transformers import UMT5EncoderModel

from rehyat_jax.convert.sources import CheckpointError
from rehyat_jax.convert.umt5 import (LAYOUTS, WAN_T5_FILENAME, convert_umt5_checkpoint, detect_config, load_umt5,
                                     open_source, read_umt5_config, source_key_table, target_shapes)
from rehyat_jax.convert.storage import restore_params
from rehyat_jax.models.umt5 import UMT5_TINY, UMT5Config, UMT5Encoder

FP32_TOLERANCE = 1e-5
# Wan's .pth carries no config, so max_distance comes out as the released 128: the Wan-layout model uses it.
WAN_TINY = UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3,
                      relative_attention_num_buckets=8, relative_attention_max_distance=128)
# Released Wan2.1 directories hold the DiT's config.json next to the T5 file; it must be ignored.
WAN_DIT_CONFIG = {"_class_name": "WanModel", "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30}

forward = jax.jit(lambda encoder, ids, mask: encoder(ids, mask))


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def build_hf_encoder(cfg: UMT5Config, seed: int = 0) -> UMT5EncoderModel:
  """Random transformers encoder of ``cfg``; norm scales are 1 + noise so that they matter."""
  torch.manual_seed(seed)
  model = UMT5EncoderModel(HFUMT5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
      num_layers=cfg.num_layers, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance, layer_norm_epsilon=cfg.eps,
      feed_forward_proj="gated-gelu")).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
  return model


def wan_state_dict(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
  """``model``'s weights under Wan's T5Encoder names (gate.0 = GELU branch wi_0, fc1 = wi_1, fc2 = wo)."""
  state = {"token_embedding.weight": model.shared.weight, "norm.weight": model.encoder.final_layer_norm.weight}
  for i, block in enumerate(model.encoder.block):
    attention, ffn = block.layer[0].SelfAttention, block.layer[1].DenseReluDense
    state.update({
        f"blocks.{i}.norm1.weight": block.layer[0].layer_norm.weight,
        f"blocks.{i}.attn.q.weight": attention.q.weight,
        f"blocks.{i}.attn.k.weight": attention.k.weight,
        f"blocks.{i}.attn.v.weight": attention.v.weight,
        f"blocks.{i}.attn.o.weight": attention.o.weight,
        f"blocks.{i}.norm2.weight": block.layer[1].layer_norm.weight,
        f"blocks.{i}.ffn.gate.0.weight": ffn.wi_0.weight,
        f"blocks.{i}.ffn.fc1.weight": ffn.wi_1.weight,
        f"blocks.{i}.ffn.fc2.weight": ffn.wo.weight,
        f"blocks.{i}.pos_embedding.embedding.weight": attention.relative_attention_bias.weight,
    })
  return {key: value.detach().clone() for key, value in state.items()}


def write_wan_release(state: dict[str, torch.Tensor], directory: Path) -> Path:
  """A Wan2.1-release-like directory: the T5 .pth plus the DiT's config.json."""
  directory.mkdir(parents=True, exist_ok=True)
  torch.save(state, directory / WAN_T5_FILENAME)
  (directory / "config.json").write_text(json.dumps(WAN_DIT_CONFIG))
  return directory


def batch(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Two right-padded prompts of 40 and 13 tokens (40 > bucket boundaries of both configs' first buckets)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(2, vocab_size, (2, 40)).astype(np.int32)
  mask = np.ones((2, 40), np.int32)
  ids[1, 13:], mask[1, 13:] = 0, 0
  return ids, mask


def check_parity(model: UMT5EncoderModel, ckpt: Path) -> float:
  encoder = load_umt5(ckpt)
  ids, mask = batch(encoder.cfg.vocab_size)
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  err = rel_err(forward(encoder, jnp.asarray(ids), jnp.asarray(mask)), ref.last_hidden_state.numpy())
  assert err <= FP32_TOLERANCE
  return err


@pytest.fixture(scope="module")
def wan_model():
  return build_hf_encoder(WAN_TINY, seed=2)


@pytest.fixture(scope="module")
def tiny_model():
  return build_hf_encoder(UMT5_TINY, seed=3)


# ------------------------------------------------------------------------------------------------------------
# Layouts and formats
# ------------------------------------------------------------------------------------------------------------

def test_wan_pth_layout(wan_model, tmp_path):
  """Wan's .pth from its release directory: config detected from shapes alone, same output as transformers."""
  release = write_wan_release(wan_state_dict(wan_model), tmp_path / "Wan2.1-T2V-1.3B")
  assert open_source(release).path.name == WAN_T5_FILENAME
  cfg = convert_umt5_checkpoint(release, tmp_path / "out", dtype="float32", progress=None)
  assert cfg == WAN_TINY
  err = check_parity(wan_model, tmp_path / "out")
  print(f"wan .pth layout fp32 parity: {err:.2e}")


def test_wan_pth_bf16_is_copied_exactly(wan_model, tmp_path):
  """The release file is bf16: converting to bf16 keeps every bit; tensors land transposed where they should."""
  state = {key: value.to(torch.bfloat16) for key, value in wan_state_dict(wan_model).items()}
  src = tmp_path / "t5.pth"
  torch.save(state, src)
  convert_umt5_checkpoint(src, tmp_path / "out", progress=None)  # default dtype: bfloat16
  params = restore_params(tmp_path / "out")
  as_np = lambda t: t.float().numpy()
  assert params["blocks"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(params["token_embedding"]["embedding"], np.float32),
                                as_np(state["token_embedding.weight"]))
  for i in range(WAN_TINY.num_layers):
    np.testing.assert_array_equal(np.asarray(params["blocks"]["ffn"]["wi_0"]["kernel"][i], np.float32),
                                  as_np(state[f"blocks.{i}.ffn.gate.0.weight"]).T)
    np.testing.assert_array_equal(np.asarray(params["blocks"]["ffn"]["wi_1"]["kernel"][i], np.float32),
                                  as_np(state[f"blocks.{i}.ffn.fc1.weight"]).T)
    np.testing.assert_array_equal(np.asarray(params["blocks"]["attn"]["relative_bias"][i], np.float32),
                                  as_np(state[f"blocks.{i}.pos_embedding.embedding.weight"]))


def test_transformers_layout_from_diffusers_root(tiny_model, tmp_path):
  """A diffusers repo root resolves to text_encoder/ (a sharded save here); config.json gives max_distance."""
  tiny_model.save_pretrained(tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "text_encoder", max_shard_size="20KB")
  assert len(list((tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "text_encoder").glob("*.safetensors"))) > 1
  cfg = convert_umt5_checkpoint(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", tmp_path / "out", dtype="float32",
                                progress=None)
  assert cfg == UMT5_TINY
  check_parity(tiny_model, tmp_path / "out")


@pytest.mark.parametrize("embedding_keys", [("encoder.embed_tokens.weight",),
                                            ("shared.weight", "encoder.embed_tokens.weight")])
def test_transformers_layout_torch_file_and_tied_embedding(tiny_model, tmp_path, embedding_keys):
  """transformers names in a torch .bin, with the tied embedding under either name, or both."""
  state = {key: value.clone() for key, value in tiny_model.state_dict().items()
           if key not in ("shared.weight", "encoder.embed_tokens.weight")}
  state.update({key: tiny_model.shared.weight.detach().clone() for key in embedding_keys})
  (tmp_path / "src").mkdir()
  torch.save(state, tmp_path / "src" / "pytorch_model.bin")
  tiny_model.config.to_json_file(tmp_path / "src" / "config.json")
  cfg = convert_umt5_checkpoint(tmp_path / "src", tmp_path / "out", dtype="float32", progress=None)
  assert cfg == UMT5_TINY
  check_parity(tiny_model, tmp_path / "out")


def test_target_shapes_match_the_model():
  for cfg in (UMT5_TINY, WAN_TINY):
    abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
    model_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    assert model_shapes == target_shapes(cfg)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_key_table_fills_every_leaf_once(layout):
  slots = source_key_table(UMT5_TINY, layout)
  filled = [(slot.path, slot.layer) for slot in slots.values()]
  assert len(filled) == len(set(filled)) == 2 + 10 * UMT5_TINY.num_layers
  leaves = jax.tree_util.tree_flatten_with_path(target_shapes(UMT5_TINY), is_leaf=lambda x: isinstance(x, tuple))[0]
  expected = {(tuple(k.key for k in path), layer if path[0].key == "blocks" else None)
              for path, _ in leaves for layer in range(UMT5_TINY.num_layers)}
  assert set(filled) == expected


def test_load_on_a_mesh(wan_model, tmp_path):
  release = write_wan_release(wan_state_dict(wan_model), tmp_path / "release")
  convert_umt5_checkpoint(release, tmp_path / "out", dtype="float32", progress=None)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  encoder = load_umt5(tmp_path / "out", mesh=mesh)
  sharding = encoder.blocks.attn.q.kernel[...].sharding
  assert isinstance(sharding, jax.sharding.NamedSharding) and sharding.spec == jax.P(None, "fsdp", "tensor")
  check_parity(wan_model, tmp_path / "out")


# ------------------------------------------------------------------------------------------------------------
# Errors: one clear CheckpointError, nothing left behind
# ------------------------------------------------------------------------------------------------------------

def convert_fails(src, tmp_path, match, **kwargs) -> str:
  before = set(tmp_path.iterdir())
  with pytest.raises(CheckpointError, match=match) as info:
    convert_umt5_checkpoint(src, tmp_path / "out", progress=None, **kwargs)
  assert set(tmp_path.iterdir()) == before, "conversion left files behind"
  return str(info.value)


@pytest.fixture
def wan_state(wan_model):
  return wan_state_dict(wan_model)


def save(state, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save(state, path)
  return path


def test_missing_unexpected_and_misshaped_reported_together(wan_state, tmp_path):
  del wan_state["blocks.1.ffn.fc1.weight"]
  wan_state["blocks.0.attn.extra.weight"] = torch.zeros(3)
  wan_state["blocks.2.attn.o.weight"] = torch.zeros(32, 31)
  message = convert_fails(save(wan_state, tmp_path / "src" / "t5.pth"), tmp_path, "does not match a umT5 encoder")
  assert "1 missing key:\n    blocks.1.ffn.fc1.weight  expected [48, 32]" in message
  assert "1 unexpected key:\n    blocks.0.attn.extra.weight  [3]" in message
  assert "1 shape mismatch:\n    blocks.2.attn.o.weight: expected [32, 32], found [32, 31]" in message


def test_wrong_shape_in_safetensors(tiny_model, tmp_path):
  state = {key: value.clone() for key, value in tiny_model.state_dict().items() if key != "encoder.embed_tokens.weight"}
  state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(8, 5)
  (tmp_path / "src").mkdir()
  safetensors.torch.save_file(state, tmp_path / "src" / "model.safetensors")
  tiny_model.config.to_json_file(tmp_path / "src" / "config.json")
  message = convert_fails(tmp_path / "src", tmp_path, "1 shape mismatch")
  key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
  assert f"{key}: expected [8, 4], found [8, 5]" in message


def test_non_float_tensor(wan_state, tmp_path):
  wan_state["norm.weight"] = torch.ones(32, dtype=torch.int32)
  message = convert_fails(save(wan_state, tmp_path / "src" / "t5.pth"), tmp_path, "unsupported dtype")
  assert "norm.weight: torch.int32" in message


def test_unknown_layout(tmp_path):
  src = save({"encoder.layers.0.weight": torch.zeros(2), "lm_head.weight": torch.zeros(2)}, tmp_path / "src" / "x.pth")
  message = convert_fails(src, tmp_path, "unknown checkpoint layout")
  assert "encoder.layers.0.weight" in message


def test_not_a_state_dict(tmp_path):
  src = save({"model": {"a": torch.zeros(2)}, "step": 3}, tmp_path / "src" / "x.pth")
  convert_fails(src, tmp_path, "expected a state dict")


def test_t5_config_is_rejected(tiny_model, tmp_path):
  tiny_model.save_pretrained(tmp_path / "src")
  config = json.loads((tmp_path / "src" / "config.json").read_text())
  (tmp_path / "src" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
  convert_fails(tmp_path / "src", tmp_path, "only umT5")


def test_pth_without_torch(wan_state, tmp_path, monkeypatch):
  src = save(wan_state, tmp_path / "src" / "t5.pth")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  convert_fails(src, tmp_path, "needs torch, which is not installed: pip install torch")


def test_no_weights_and_existing_destination(wan_state, tmp_path):
  (tmp_path / "empty").mkdir()
  convert_fails(tmp_path / "empty", tmp_path, "no umT5 weights found")
  convert_fails(tmp_path / "nowhere", tmp_path, "no such file or directory")
  src = save(wan_state, tmp_path / "src" / "t5.pth")
  (tmp_path / "out").mkdir()
  with pytest.raises(CheckpointError, match="already exists"):
    convert_umt5_checkpoint(src, tmp_path / "out", progress=None)


def test_reading_something_else(tmp_path):
  with pytest.raises(CheckpointError, match="not a converted umT5 checkpoint"):
    load_umt5(tmp_path)
  (tmp_path / "params").mkdir()
  (tmp_path / "config.json").write_text(json.dumps({"dim": 1536, "ffn_dim": 8960}))  # a converted DiT's
  with pytest.raises(CheckpointError, match="not a umT5 config"):
    read_umt5_config(tmp_path)


def test_detect_config_without_max_distance(wan_state, tmp_path):
  """Shapes fix everything but max_distance, which defaults to the released 128."""
  source = open_source(save(wan_state, tmp_path / "t5.pth"))
  assert detect_config(source, "wan") == WAN_TINY
