"""umT5 encoder parity with transformers' ``UMT5EncoderModel``, through the real converter, and the tokenizer.

Reference: transformers on CPU in float32, random weights (norm scales around 1), token ids with right padding.
Error is max |ours - torch| / max |torch| over the whole output (padded positions included: both compute them
the same way).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece
import torch
from flax import nnx
from transformers import T5Tokenizer
from transformers import UMT5Config as HFUMT5Config
from transformers import UMT5EncoderModel

from rehyat_jax.convert.umt5 import convert_umt5_checkpoint, load_umt5
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.tokenizer import EOS_ID, PAD_ID, UMT5Tokenizer, clean_prompt
from rehyat_jax.models.umt5 import (UMT5_TINY, UMT5_XXL, UMT5Config, UMT5Encoder, encode_for_wan,
                                    relative_position_buckets)

FP32_TOLERANCE = 1e-5
# bf16 matmuls (float32 accumulation, norms, softmax and residual stream) over 3 layers: measured 8e-3 (bf16)
# and 1.0e-2 (bf16_params, whose weights are rounded too) against float32 transformers.
BF16_TOLERANCE = 2e-2
# The tiny config of the brief, and one whose attention width (heads * d_kv = 24) differs from d_model.
TINY_NARROW_ATTENTION = UMT5Config(vocab_size=128, d_model=32, d_kv=6, num_heads=4, d_ff=48, num_layers=2,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def hf_config(cfg: UMT5Config) -> HFUMT5Config:
  return HFUMT5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, num_heads=cfg.num_heads,
                      d_ff=cfg.d_ff, num_layers=cfg.num_layers,
                      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
                      relative_attention_max_distance=cfg.relative_attention_max_distance,
                      layer_norm_epsilon=cfg.eps, feed_forward_proj="gated-gelu")


def build_hf_encoder(cfg: UMT5Config, seed: int = 0) -> UMT5EncoderModel:
  """Random transformers encoder; norm scales are 1 + noise so that they matter."""
  torch.manual_seed(seed)
  model = UMT5EncoderModel(hf_config(cfg)).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
  return model


def padded_batch(vocab_size: int, lengths: list[int], total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded ids (pad 0, last real token EOS = 1) and mask, like the tokenizer's output."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), total), np.int32)
  mask = np.zeros((len(lengths), total), np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(2, vocab_size, n)
    ids[row, n - 1] = 1
    mask[row, :n] = 1
  return ids, mask


def torch_reference(model: UMT5EncoderModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  return out.last_hidden_state.numpy()


# Jitted once per (config, policy, shape): eager calls would recompile the layer scan every time.
forward = jax.jit(lambda encoder, ids, mask: encoder(ids, mask))


def convert_hf_encoder(cfg: UMT5Config, tmp_path_factory) -> tuple[UMT5EncoderModel, Path]:
  """(transformers model, converted checkpoint dir) via save_pretrained -> convert_umt5_checkpoint (float32)."""
  model = build_hf_encoder(cfg, seed=1)
  src = tmp_path_factory.mktemp("hf") / "text_encoder"
  model.save_pretrained(src)
  dst = tmp_path_factory.mktemp("converted") / "umt5"
  assert convert_umt5_checkpoint(src, dst, dtype="float32", progress=None) == cfg
  return model, dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return convert_hf_encoder(UMT5_TINY, tmp_path_factory)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
  return convert_hf_encoder(TINY_NARROW_ATTENTION, tmp_path_factory)


# 40 tokens reach past max_distance 16, so every bucket, logarithmic ones included, is used; a 1-token prompt
# (just EOS) is the shortest the tokenizer makes.
@pytest.mark.parametrize("model,lengths,total", [("tiny", [5, 40, 17], 40), ("tiny", [1, 9], 12),
                                                 ("narrow", [5, 40, 17], 40)])
def test_parity_with_transformers(request, model, lengths, total):
  torch_model, ckpt = request.getfixturevalue(model)
  encoder = load_umt5(ckpt)
  ids, mask = padded_batch(encoder.cfg.vocab_size, lengths, total, seed=total)
  ours = forward(encoder, jnp.asarray(ids), jnp.asarray(mask))
  assert ours.shape == (len(lengths), total, encoder.cfg.d_model) and ours.dtype == jnp.float32
  err = rel_err(ours, torch_reference(torch_model, ids, mask))
  print(f"fp32 parity {model} {lengths}/{total}: {err:.2e}")
  assert err <= FP32_TOLERANCE


def test_eager_call_and_padding_independence(tiny):
  """The unjitted call works, and a prompt's outputs do not depend on how much padding follows it."""
  encoder = load_umt5(tiny[1])
  ids, mask = padded_batch(encoder.cfg.vocab_size, [1, 9], 12, seed=12)
  eager = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask)))
  jitted = np.asarray(forward(encoder, jnp.asarray(ids), jnp.asarray(mask)))
  assert rel_err(eager, jitted) <= 1e-6
  more_padding = np.asarray(forward(encoder, jnp.asarray(np.pad(ids, ((0, 0), (0, 28)))),
                                    jnp.asarray(np.pad(mask, ((0, 0), (0, 28))))))
  assert rel_err(more_padding[1, :9], jitted[1, :9]) <= FP32_TOLERANCE


def test_merge_inside_jit(tiny):
  """The functional form (graphdef + state as jit arguments) that training and sharded inference use."""
  encoder = load_umt5(tiny[1])
  graphdef, state = nnx.split(encoder)
  ids, mask = padded_batch(encoder.cfg.vocab_size, [5, 40, 17], 40, seed=40)
  merged = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))(state, ids, mask)
  assert rel_err(merged, forward(encoder, jnp.asarray(ids), jnp.asarray(mask))) <= 1e-6


@pytest.mark.parametrize("precision", ["bf16", "bf16_params"])
def test_bf16_policy(tiny, precision):
  torch_model, ckpt = tiny
  policy = PrecisionPolicy.named(precision)
  encoder = load_umt5(ckpt, policy)
  assert encoder.blocks.attn.q.kernel.dtype == policy.param_dtype
  assert encoder.token_embedding.embedding.dtype == policy.param_dtype
  assert encoder.blocks.attn_norm.scale.dtype == jnp.float32  # norms stay float32 in every policy
  ids, mask = padded_batch(encoder.cfg.vocab_size, [5, 40, 17], 40, seed=40)
  ours = forward(encoder, jnp.asarray(ids), jnp.asarray(mask))
  assert ours.dtype == jnp.float32
  err = rel_err(ours, torch_reference(torch_model, ids, mask))
  print(f"{precision} vs fp32 transformers: {err:.2e}")
  assert err <= BF16_TOLERANCE


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (16, 32)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
  """Every (query, key) bucket for 600 positions, umT5-XXL's bucket boundaries included."""
  cfg = UMT5Config(vocab_size=8, d_model=8, d_kv=2, num_heads=4, d_ff=8, num_layers=1,
                   relative_attention_num_buckets=num_buckets, relative_attention_max_distance=max_distance)
  attention = UMT5EncoderModel(hf_config(cfg)).encoder.block[0].layer[0].SelfAttention
  length = 600
  relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  expected = attention._relative_position_bucket(relative).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(relative_position_buckets(length, length, num_buckets, max_distance), expected)


def test_encode_for_wan():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 10, 4)), jnp.float32)
  mask = jnp.asarray([[1] * 3 + [0] * 7, [1] * 10])
  out = np.asarray(encode_for_wan(hidden, mask, text_len=16))
  assert out.shape == (2, 16, 4)
  np.testing.assert_array_equal(out[0, :3], np.asarray(hidden)[0, :3])
  np.testing.assert_array_equal(out[1, :10], np.asarray(hidden)[1])
  assert not out[0, 3:].any() and not out[1, 10:].any()
  with pytest.raises(ValueError, match="exceeds text_len"):
    encode_for_wan(hidden, mask, text_len=8)


def test_xxl_config_and_parameter_count():
  cfg = UMT5_XXL
  assert (cfg.vocab_size, cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.num_heads, cfg.num_layers) == (
      256384, 4096, 4096, 10240, 64, 24)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(abstract, nnx.Param)))
  assert count == 5_680_910_336  # "≈5.7B" (wan21-reference.md §3.5)


def test_every_parameter_has_logical_axes():
  state = nnx.state(nnx.eval_shape(lambda: UMT5Encoder(UMT5_TINY, rngs=nnx.Rngs(0))), nnx.Param)
  for path, variable in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda v: isinstance(v, nnx.Variable))[0]:
    axes = variable.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == variable.ndim, jax.tree_util.keystr(path)


def test_config_validation():
  with pytest.raises(ValueError, match="gated-gelu"):
    UMT5Config(feed_forward_proj="relu")
  with pytest.raises(ValueError, match="unknown fields"):
    UMT5Config.from_dict({"d_model": 8, "dim": 8})
  assert UMT5Config.from_dict(UMT5_TINY.to_dict()) == UMT5_TINY


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------

CORPUS = """A cat sits on the mat in the warm afternoon sun.
The quick brown fox jumps over the lazy dog near the river.
Video of a red car driving along a coastal road at sunset.
Ein Hund läuft über die grüne Wiese.
一只猫在草地上奔跑。
Colorful fireworks explode over the city skyline at night.
"""


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
  """A folder with a 64-piece SentencePiece model trained here, with T5's special ids."""
  directory = tmp_path_factory.mktemp("tokenizer")
  corpus = directory / "corpus.txt"
  corpus.write_text(CORPUS * 3)
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(directory / "spiece"), vocab_size=64, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  return directory


def test_tokenizer_ids_eos_and_padding(spiece_dir):
  tokenizer = UMT5Tokenizer(spiece_dir, text_len=32)
  processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_dir / "spiece.model"))
  prompts = ["A cat sits on the mat.", "", "一只猫在草地上奔跑。 Ein Hund"]
  ids, mask = tokenizer(prompts)
  assert ids.shape == mask.shape == (3, 32) and ids.dtype == mask.dtype == np.int32
  for row, prompt in enumerate(prompts):
    pieces = processor.encode(prompt)
    n = len(pieces) + 1
    np.testing.assert_array_equal(ids[row, :n], pieces + [EOS_ID])
    assert (ids[row, n:] == PAD_ID).all()
    np.testing.assert_array_equal(mask[row], [1] * n + [0] * (32 - n))
  assert ids[1, 0] == EOS_ID and mask[1].sum() == 1  # an empty prompt is just EOS


def test_tokenizer_truncation(spiece_dir):
  tokenizer = UMT5Tokenizer(spiece_dir, text_len=8)
  ids, mask = tokenizer("The quick brown fox jumps over the lazy dog near the river.")
  processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_dir / "spiece.model"))
  pieces = processor.encode("The quick brown fox jumps over the lazy dog near the river.")
  assert len(pieces) > 8
  np.testing.assert_array_equal(ids[0], pieces[:7] + [EOS_ID])
  assert mask.sum() == 8


def test_tokenizer_matches_transformers_t5_tokenizer(spiece_dir):
  """Wan calls transformers' T5 tokenizer with padding='max_length', truncation=True, max_length=text_len."""
  reference = T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=0)
  tokenizer = UMT5Tokenizer(spiece_dir, text_len=16, fix_text=None)
  prompts = ["A cat sits on the mat.", "Video of a red car driving along a coastal road at sunset, seen from above",
             "Ein Hund läuft über die grüne Wiese.", "一只猫在草地上奔跑。", "xyz QQQ 123 ??", ""]
  expected = reference([clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=16)
  ids, mask = tokenizer(prompts)
  np.testing.assert_array_equal(ids, np.asarray(expected.input_ids))
  np.testing.assert_array_equal(mask, np.asarray(expected.attention_mask))


def test_whitespace_cleaning(spiece_dir):
  assert clean_prompt("  a \t cat\n\n on\u3000the  mat  ") == "a cat on the mat"
  assert clean_prompt("fish &amp;amp; chips &lt;b&gt;") == "fish & chips <b>"  # unescaped twice, as Wan does
  assert clean_prompt("a\x1cb") == "a\x1cb"  # the regex module's \s does not match U+001C..U+001F
  tokenizer = UMT5Tokenizer(spiece_dir, text_len=32)
  np.testing.assert_array_equal(tokenizer("  A   cat\tsits on\nthe mat. ")[0], tokenizer("A cat sits on the mat.")[0])


def test_whitespace_class_matches_regex_module():
  regex = pytest.importorskip("regex")
  text = "".join(chr(c) for c in range(0x3100)) + "\u205f\u3000\ufeff"
  assert clean_prompt(text) == regex.sub(r"\s+", " ", text.strip()).strip()


def test_tokenizer_file_errors(tmp_path, spiece_dir):
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    UMT5Tokenizer(tmp_path)
  (tmp_path / "tokenizer").mkdir()
  (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="found tokenizer.json"):
    UMT5Tokenizer(tmp_path)
  # The tokenizer folders of the Wan release and of diffusers checkpoints are found from the root.
  for sub in ("google/umt5-xxl", "tokenizer"):
    root = tmp_path / sub.replace("/", "_")
    (root / sub).mkdir(parents=True)
    (root / sub / "spiece.model").write_bytes((spiece_dir / "spiece.model").read_bytes())
    assert UMT5Tokenizer(root).model_file == root / sub / "spiece.model"
