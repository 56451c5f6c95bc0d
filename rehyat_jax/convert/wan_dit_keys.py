"""The Wan2.1 T2V DiT key tables: which PyTorch tensor fills which leaf of the scanned JAX parameter tree.

- ``ORIGINAL`` (``Wan-Video/Wan2.1``): every original-layout key -> (path in the scanned JAX tree, transform);
  block tensors fill row i of leaves that lead with [num_layers].
- ``DIFFUSERS`` (``WanTransformer3DModel``): the same rows under diffusers names, composed from the bijective
  rename diffusers key -> original key (diffusers' ``WanTransformer3DModel`` names vs the original ``WanModel``'s), which ``diffusers_to_original_keys`` expands.

Shapes have one source of truth, ``target_shapes(cfg)``; ``expected_source_keys`` derives the torch shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from rehyat_jax.convert.key_rows import Entry, KeyRow, KeyTemplates, Shape, expected_shapes
from rehyat_jax.models.config import WanConfig

Layout = Literal["original", "diffusers"]
LAYOUTS: tuple[Layout, ...] = ("original", "diffusers")

# Original-layout top-level tensors -> (target path, transform).
_ORIGINAL_TOP_LEVEL: dict[str, Entry] = {
    "patch_embedding.weight": (("patch_embedding", "kernel"), "conv3d"),
    "patch_embedding.bias": (("patch_embedding", "bias"), "copy"),
    "text_embedding.0.weight": (("text_embedding", "linear_1", "kernel"), "linear"),
    "text_embedding.0.bias": (("text_embedding", "linear_1", "bias"), "copy"),
    "text_embedding.2.weight": (("text_embedding", "linear_2", "kernel"), "linear"),
    "text_embedding.2.bias": (("text_embedding", "linear_2", "bias"), "copy"),
    "time_embedding.0.weight": (("time_embedding", "linear_1", "kernel"), "linear"),
    "time_embedding.0.bias": (("time_embedding", "linear_1", "bias"), "copy"),
    "time_embedding.2.weight": (("time_embedding", "linear_2", "kernel"), "linear"),
    "time_embedding.2.bias": (("time_embedding", "linear_2", "bias"), "copy"),
    "time_projection.1.weight": (("time_projection", "kernel"), "linear"),
    "time_projection.1.bias": (("time_projection", "bias"), "copy"),
    "head.modulation": (("head", "modulation"), "copy"),
    "head.head.weight": (("head", "head", "kernel"), "linear"),
    "head.head.bias": (("head", "head", "bias"), "copy"),
}

# Original-layout tensors of block {i} -> (target path under "blocks", transform).
_ORIGINAL_BLOCK: dict[str, Entry] = {
    "blocks.{i}.modulation": (("modulation",), "copy"),
    "blocks.{i}.self_attn.q.weight": (("self_attn", "q", "kernel"), "linear"),
    "blocks.{i}.self_attn.q.bias": (("self_attn", "q", "bias"), "copy"),
    "blocks.{i}.self_attn.k.weight": (("self_attn", "k", "kernel"), "linear"),
    "blocks.{i}.self_attn.k.bias": (("self_attn", "k", "bias"), "copy"),
    "blocks.{i}.self_attn.v.weight": (("self_attn", "v", "kernel"), "linear"),
    "blocks.{i}.self_attn.v.bias": (("self_attn", "v", "bias"), "copy"),
    "blocks.{i}.self_attn.o.weight": (("self_attn", "o", "kernel"), "linear"),
    "blocks.{i}.self_attn.o.bias": (("self_attn", "o", "bias"), "copy"),
    "blocks.{i}.self_attn.norm_q.weight": (("self_attn", "norm_q", "scale"), "copy"),
    "blocks.{i}.self_attn.norm_k.weight": (("self_attn", "norm_k", "scale"), "copy"),
    "blocks.{i}.norm3.weight": (("norm3", "scale"), "copy"),
    "blocks.{i}.norm3.bias": (("norm3", "bias"), "copy"),
    "blocks.{i}.cross_attn.q.weight": (("cross_attn", "q", "kernel"), "linear"),
    "blocks.{i}.cross_attn.q.bias": (("cross_attn", "q", "bias"), "copy"),
    "blocks.{i}.cross_attn.k.weight": (("cross_attn", "k", "kernel"), "linear"),
    "blocks.{i}.cross_attn.k.bias": (("cross_attn", "k", "bias"), "copy"),
    "blocks.{i}.cross_attn.v.weight": (("cross_attn", "v", "kernel"), "linear"),
    "blocks.{i}.cross_attn.v.bias": (("cross_attn", "v", "bias"), "copy"),
    "blocks.{i}.cross_attn.o.weight": (("cross_attn", "o", "kernel"), "linear"),
    "blocks.{i}.cross_attn.o.bias": (("cross_attn", "o", "bias"), "copy"),
    "blocks.{i}.cross_attn.norm_q.weight": (("cross_attn", "norm_q", "scale"), "copy"),
    "blocks.{i}.cross_attn.norm_k.weight": (("cross_attn", "norm_k", "scale"), "copy"),
    "blocks.{i}.ffn.0.weight": (("ffn", "fc1", "kernel"), "linear"),
    "blocks.{i}.ffn.0.bias": (("ffn", "fc1", "bias"), "copy"),
    "blocks.{i}.ffn.2.weight": (("ffn", "fc2", "kernel"), "linear"),
    "blocks.{i}.ffn.2.bias": (("ffn", "fc2", "bias"), "copy"),
}

# Diffusers (WanTransformer3DModel) top-level key -> original key.
_DIFFUSERS_TOP_LEVEL: dict[str, str] = {
    "patch_embedding.weight": "patch_embedding.weight",
    "patch_embedding.bias": "patch_embedding.bias",
    "condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight",
    "condition_embedder.text_embedder.linear_1.bias": "text_embedding.0.bias",
    "condition_embedder.text_embedder.linear_2.weight": "text_embedding.2.weight",
    "condition_embedder.text_embedder.linear_2.bias": "text_embedding.2.bias",
    "condition_embedder.time_embedder.linear_1.weight": "time_embedding.0.weight",
    "condition_embedder.time_embedder.linear_1.bias": "time_embedding.0.bias",
    "condition_embedder.time_embedder.linear_2.weight": "time_embedding.2.weight",
    "condition_embedder.time_embedder.linear_2.bias": "time_embedding.2.bias",
    "condition_embedder.time_proj.weight": "time_projection.1.weight",
    "condition_embedder.time_proj.bias": "time_projection.1.bias",
    "scale_shift_table": "head.modulation",
    "proj_out.weight": "head.head.weight",
    "proj_out.bias": "head.head.bias",
}

# Diffusers key of block {i} -> original key. diffusers numbers the block norms in execution order, so its
# affine cross-attention norm is norm2 where the original calls it norm3.
_DIFFUSERS_BLOCK: dict[str, str] = {
    "blocks.{i}.scale_shift_table": "blocks.{i}.modulation",
    "blocks.{i}.attn1.to_q.weight": "blocks.{i}.self_attn.q.weight",
    "blocks.{i}.attn1.to_q.bias": "blocks.{i}.self_attn.q.bias",
    "blocks.{i}.attn1.to_k.weight": "blocks.{i}.self_attn.k.weight",
    "blocks.{i}.attn1.to_k.bias": "blocks.{i}.self_attn.k.bias",
    "blocks.{i}.attn1.to_v.weight": "blocks.{i}.self_attn.v.weight",
    "blocks.{i}.attn1.to_v.bias": "blocks.{i}.self_attn.v.bias",
    "blocks.{i}.attn1.to_out.0.weight": "blocks.{i}.self_attn.o.weight",
    "blocks.{i}.attn1.to_out.0.bias": "blocks.{i}.self_attn.o.bias",
    "blocks.{i}.attn1.norm_q.weight": "blocks.{i}.self_attn.norm_q.weight",
    "blocks.{i}.attn1.norm_k.weight": "blocks.{i}.self_attn.norm_k.weight",
    "blocks.{i}.norm2.weight": "blocks.{i}.norm3.weight",
    "blocks.{i}.norm2.bias": "blocks.{i}.norm3.bias",
    "blocks.{i}.attn2.to_q.weight": "blocks.{i}.cross_attn.q.weight",
    "blocks.{i}.attn2.to_q.bias": "blocks.{i}.cross_attn.q.bias",
    "blocks.{i}.attn2.to_k.weight": "blocks.{i}.cross_attn.k.weight",
    "blocks.{i}.attn2.to_k.bias": "blocks.{i}.cross_attn.k.bias",
    "blocks.{i}.attn2.to_v.weight": "blocks.{i}.cross_attn.v.weight",
    "blocks.{i}.attn2.to_v.bias": "blocks.{i}.cross_attn.v.bias",
    "blocks.{i}.attn2.to_out.0.weight": "blocks.{i}.cross_attn.o.weight",
    "blocks.{i}.attn2.to_out.0.bias": "blocks.{i}.cross_attn.o.bias",
    "blocks.{i}.attn2.norm_q.weight": "blocks.{i}.cross_attn.norm_q.weight",
    "blocks.{i}.attn2.norm_k.weight": "blocks.{i}.cross_attn.norm_k.weight",
    "blocks.{i}.ffn.net.0.proj.weight": "blocks.{i}.ffn.0.weight",
    "blocks.{i}.ffn.net.0.proj.bias": "blocks.{i}.ffn.0.bias",
    "blocks.{i}.ffn.net.2.weight": "blocks.{i}.ffn.2.weight",
    "blocks.{i}.ffn.net.2.bias": "blocks.{i}.ffn.2.bias",
}

ORIGINAL = KeyTemplates(top_level=_ORIGINAL_TOP_LEVEL, block=_ORIGINAL_BLOCK)
DIFFUSERS = KeyTemplates(
    top_level={key: _ORIGINAL_TOP_LEVEL[original] for key, original in _DIFFUSERS_TOP_LEVEL.items()},
    block={template: _ORIGINAL_BLOCK[original] for template, original in _DIFFUSERS_BLOCK.items()})
TEMPLATES: dict[Layout, KeyTemplates] = {"original": ORIGINAL, "diffusers": DIFFUSERS}

# Image-to-video (and first-last-frame) modules, named by top-level module or by module path inside a block.
# Their presence means the checkpoint is not T2V.
I2V_TOP_LEVEL_MODULES = ("img_emb", "condition_embedder.image_embedder")
I2V_BLOCK_MODULES = frozenset({
    "cross_attn.k_img", "cross_attn.v_img", "cross_attn.norm_k_img",
    "attn2.add_k_proj", "attn2.add_v_proj", "attn2.norm_added_k", "attn2.norm_added_q",
})


def is_image_to_video_key(key: str) -> bool:
  """True for a tensor that only image-to-video Wan checkpoints have (either layout)."""
  block = ORIGINAL.split_block_key(key)  # both layouts number their blocks "blocks.N."
  if block is None:
    return any(key.startswith(module + ".") for module in I2V_TOP_LEVEL_MODULES)
  module_path = block[1].rsplit(".", 1)[0]
  return module_path in I2V_BLOCK_MODULES


def source_key_table(cfg: WanConfig, layout: Layout) -> dict[str, KeyRow]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its row (15 top-level + 27 per block)."""
  if layout not in TEMPLATES:
    raise ValueError(f"unknown checkpoint layout {layout!r}; expected one of {LAYOUTS}")
  return TEMPLATES[layout].rows(cfg.num_layers)


def original_key_table(cfg: WanConfig) -> dict[str, KeyRow]:
  """Every original-layout key of ``cfg`` -> its row."""
  return source_key_table(cfg, "original")


def diffusers_to_original_keys(num_layers: int) -> dict[str, str]:
  """The bijective rename diffusers key -> original key for a model of ``num_layers`` blocks."""
  rename = dict(_DIFFUSERS_TOP_LEVEL)
  for i in range(num_layers):
    for template, original in _DIFFUSERS_BLOCK.items():
      rename[template.format(i=i)] = original.format(i=i)
  if len(set(rename.values())) != len(rename):
    raise AssertionError("diffusers -> original rename table is not injective")
  return rename


def original_to_diffusers_keys(num_layers: int) -> dict[str, str]:
  """The inverse of ``diffusers_to_original_keys``."""
  return {original: diffusers for diffusers, original in diffusers_to_original_keys(num_layers).items()}


def target_shapes(cfg: WanConfig) -> dict[str, Any]:
  """The converted parameter tree of ``cfg`` with shapes as leaves (scanned layout: blocks lead with [L])."""
  d, f, n = cfg.dim, cfg.ffn_dim, cfg.num_layers
  pt, ph, pw = cfg.patch_size

  def linear(d_in: int, d_out: int, layers: tuple[int, ...] = ()) -> dict[str, Shape]:
    return {"kernel": layers + (d_in, d_out), "bias": layers + (d_out,)}

  def attention() -> dict[str, Any]:
    return {"q": linear(d, d, (n,)), "k": linear(d, d, (n,)), "v": linear(d, d, (n,)), "o": linear(d, d, (n,)),
            "norm_q": {"scale": (n, d)}, "norm_k": {"scale": (n, d)}}

  return {
      "patch_embedding": {"kernel": (pt, ph, pw, cfg.in_dim, d), "bias": (d,)},
      "text_embedding": {"linear_1": linear(cfg.text_dim, d), "linear_2": linear(d, d)},
      "time_embedding": {"linear_1": linear(cfg.freq_dim, d), "linear_2": linear(d, d)},
      "time_projection": linear(d, 6 * d),
      "blocks": {
          "modulation": (n, 1, 6, d),
          "self_attn": attention(),
          "norm3": {"scale": (n, d), "bias": (n, d)},
          "cross_attn": attention(),
          "ffn": {"fc1": linear(d, f, (n,)), "fc2": linear(f, d, (n,))},
      },
      "head": {"modulation": (1, 2, d), "head": linear(d, cfg.patch_volume * cfg.out_dim)},
  }


def expected_source_keys(cfg: WanConfig, layout: Layout) -> dict[str, Shape]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its torch shape."""
  return expected_shapes(source_key_table(cfg, layout), target_shapes(cfg))
