"""Converting a PyTorch umT5 encoder checkpoint into a converted checkpoint of ``UMT5Encoder``, and loading it back.

Two key layouts, each an explicit ``KeyTemplates`` table:

- ``transformers``: ``UMT5EncoderModel`` as saved by ``save_pretrained`` (diffusers' Wan ``text_encoder/``
  folder, ``google/umt5-xxl``): ``shared.weight``, ``encoder.block.N.layer.{0,1}...``,
  ``encoder.final_layer_norm.weight``. ``encoder.embed_tokens.weight`` is tied to ``shared.weight``
  (transformers saves only ``shared.weight``); either name is accepted, and when both are present the tied copy
  is not read.
- ``wan``: Wan's own ``T5Encoder`` state dict, ``models_t5_umt5-xxl-enc-bf16.pth`` of the Wan2.1 release
  (names from the original Wan2.1 release's ``wan/modules/t5.py``, which loads the file with a strict ``load_state_dict``): gate.0 is
  transformers' wi_0 (the GELU branch), fc1 is wi_1 (the linear branch), fc2 is wo.

Either layout may come as safetensors or as a torch pickle. What is umT5's own: finding the weights in a
directory (``resolve_weights``), ``detect_config`` (shapes, then a transformers config.json, then an explicit
config) and the tied embedding; validation, streaming and writing are the core's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import jax
from flax import nnx

from rehyat_jax.convert import key_rows, storage
from rehyat_jax.convert.key_rows import KeyRow, KeyTemplates, Shape
from rehyat_jax.convert.sources import (INDEX_SUFFIX, TORCH_SUFFIXES, CheckpointError, TensorSource,
                                        open_weights_file)
from rehyat_jax.convert.storage import CONFIG_FILE, Progress, report
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.umt5 import UMT5Config, UMT5Encoder

Layout = Literal["transformers", "wan"]

LAYOUTS: tuple[Layout, ...] = ("transformers", "wan")
WAN_T5_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
# Wan's T5RelativeEmbedding default, and transformers' UMT5Config default; no tensor records it.
DEFAULT_MAX_DISTANCE = 128
KIND = "umT5"  # names converted umT5 checkpoints in errors

TEMPLATES: dict[Layout, KeyTemplates] = {
    "transformers": KeyTemplates(
        top_level={
            "shared.weight": (("token_embedding", "embedding"), "copy"),
            "encoder.final_layer_norm.weight": (("final_norm", "scale"), "copy"),
        },
        block={
            "encoder.block.{i}.layer.0.layer_norm.weight": (("attn_norm", "scale"), "copy"),
            "encoder.block.{i}.layer.0.SelfAttention.q.weight": (("attn", "q", "kernel"), "linear"),
            "encoder.block.{i}.layer.0.SelfAttention.k.weight": (("attn", "k", "kernel"), "linear"),
            "encoder.block.{i}.layer.0.SelfAttention.v.weight": (("attn", "v", "kernel"), "linear"),
            "encoder.block.{i}.layer.0.SelfAttention.o.weight": (("attn", "o", "kernel"), "linear"),
            "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight":
                (("attn", "relative_bias"), "copy"),
            "encoder.block.{i}.layer.1.layer_norm.weight": (("ffn_norm", "scale"), "copy"),
            "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight": (("ffn", "wi_0", "kernel"), "linear"),
            "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight": (("ffn", "wi_1", "kernel"), "linear"),
            "encoder.block.{i}.layer.1.DenseReluDense.wo.weight": (("ffn", "wo", "kernel"), "linear"),
        },
        block_prefix="encoder.block.",
        aliases={"encoder.embed_tokens.weight": "shared.weight"},
    ),
    "wan": KeyTemplates(
        top_level={
            "token_embedding.weight": (("token_embedding", "embedding"), "copy"),
            "norm.weight": (("final_norm", "scale"), "copy"),
        },
        block={
            "blocks.{i}.norm1.weight": (("attn_norm", "scale"), "copy"),
            "blocks.{i}.attn.q.weight": (("attn", "q", "kernel"), "linear"),
            "blocks.{i}.attn.k.weight": (("attn", "k", "kernel"), "linear"),
            "blocks.{i}.attn.v.weight": (("attn", "v", "kernel"), "linear"),
            "blocks.{i}.attn.o.weight": (("attn", "o", "kernel"), "linear"),
            "blocks.{i}.pos_embedding.embedding.weight": (("attn", "relative_bias"), "copy"),
            "blocks.{i}.norm2.weight": (("ffn_norm", "scale"), "copy"),
            "blocks.{i}.ffn.gate.0.weight": (("ffn", "wi_0", "kernel"), "linear"),
            "blocks.{i}.ffn.fc1.weight": (("ffn", "wi_1", "kernel"), "linear"),
            "blocks.{i}.ffn.fc2.weight": (("ffn", "wo", "kernel"), "linear"),
        },
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Key tables and shapes
# ----------------------------------------------------------------------------------------------------------

def target_shapes(cfg: UMT5Config) -> dict[str, Any]:
  """The converted parameter tree of ``cfg`` with shapes as leaves (block leaves lead with [num_layers])."""
  n, d, inner, f = cfg.num_layers, cfg.d_model, cfg.inner_dim, cfg.d_ff
  return {
      "token_embedding": {"embedding": (cfg.vocab_size, d)},
      "blocks": {
          "attn_norm": {"scale": (n, d)},
          "attn": {"q": {"kernel": (n, d, inner)}, "k": {"kernel": (n, d, inner)}, "v": {"kernel": (n, d, inner)},
                   "o": {"kernel": (n, inner, d)},
                   "relative_bias": (n, cfg.relative_attention_num_buckets, cfg.num_heads)},
          "ffn_norm": {"scale": (n, d)},
          "ffn": {"wi_0": {"kernel": (n, d, f)}, "wi_1": {"kernel": (n, d, f)}, "wo": {"kernel": (n, f, d)}},
      },
      "final_norm": {"scale": (d,)},
  }


def _templates(layout: str) -> KeyTemplates:
  if layout not in TEMPLATES:
    raise ValueError(f"unknown umT5 checkpoint layout {layout!r}; expected one of {LAYOUTS}")
  return TEMPLATES[layout]


def source_key_table(cfg: UMT5Config, layout: Layout) -> dict[str, KeyRow]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its row (2 top-level + 10 per block)."""
  return _templates(layout).rows(cfg.num_layers)


def expected_source_keys(cfg: UMT5Config, layout: Layout) -> dict[str, Shape]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its torch shape."""
  return key_rows.expected_shapes(source_key_table(cfg, layout), target_shapes(cfg))


# ----------------------------------------------------------------------------------------------------------
# Sources, detection and validation
# ----------------------------------------------------------------------------------------------------------

def resolve_weights(path: str | os.PathLike) -> Path:
  """The weights to read for ``path``: a file as given; in a directory, Wan's T5 file, else ``text_encoder/``
  (a diffusers repo root), else its safetensors (or index), else its single torch file."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if path.is_file():
    return path
  if (path / WAN_T5_FILENAME).is_file():
    return path / WAN_T5_FILENAME
  safetensors = sorted(path.glob("*.safetensors")) + sorted(path.glob("*" + INDEX_SUFFIX))
  if not safetensors and (path / "text_encoder").is_dir():
    return resolve_weights(path / "text_encoder")
  if safetensors:
    return path
  torch_files = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
  if len(torch_files) == 1:
    return torch_files[0]
  found = ", ".join(p.name for p in torch_files) or "none"
  raise CheckpointError(f"{path}: no umT5 weights found (looked for {WAN_T5_FILENAME}, text_encoder/, *.safetensors, "
                        f"*{INDEX_SUFFIX} and a single {'/'.join(TORCH_SUFFIXES)} file; torch files: {found})")


def open_source(path: str | os.PathLike) -> TensorSource:
  """Opens the umT5 weights at ``path`` (see ``resolve_weights``)."""
  return open_weights_file(resolve_weights(path), torch_config_name=CONFIG_FILE)


def detect_layout(keys: list[str] | set[str]) -> Layout:
  """'transformers' or 'wan', whichever names more of ``keys``."""
  return key_rows.detect_layout(keys, TEMPLATES, "transformers' UMT5EncoderModel nor Wan's T5Encoder")


def config_fields_from_shapes(shapes: dict[str, Shape], layout: Layout) -> dict[str, Any]:
  """The UMT5Config fields that the tensor shapes fix (what is present); ``shapes`` keyed by table names."""
  templates = _templates(layout)
  fields: dict[str, Any] = {}
  num_layers = templates.num_layers(shapes)
  if num_layers:
    fields["num_layers"] = num_layers
  table = templates.rows(num_layers)

  def first(target: tuple[str, ...]) -> Shape:
    """The shape of the first present tensor filling ``target`` (a path under "blocks" for block tensors)."""
    for key, row in table.items():
      relative = row.path[len(templates.block_path):] if row.layer is not None else row.path
      if relative == target and key in shapes:
        return shapes[key]
    return ()

  embedding = first(("token_embedding", "embedding"))
  if len(embedding) == 2:
    fields.update(vocab_size=embedding[0], d_model=embedding[1])
  bias = first(("attn", "relative_bias"))
  if len(bias) == 2:
    fields.update(relative_attention_num_buckets=bias[0], num_heads=bias[1])
  q = first(("attn", "q", "kernel"))
  if len(q) == 2 and fields.get("num_heads") and q[0] % fields["num_heads"] == 0:
    fields["d_kv"] = q[0] // fields["num_heads"]
  wi_0 = first(("ffn", "wi_0", "kernel"))
  if len(wi_0) == 2:
    fields["d_ff"] = wi_0[0]
  return fields


def config_fields_from_json(config: dict[str, Any], path: Path | str = CONFIG_FILE) -> dict[str, Any]:
  """UMT5Config fields of a transformers ``UMT5Config`` config.json; {} for a config of anything else."""
  model_type = config.get("model_type")
  if model_type in ("t5", "mt5"):
    raise CheckpointError(f"{path}: model_type {model_type!r} shares one position-bias table across layers; only "
                          "umT5 (a table per layer) is supported")
  if model_type != "umt5":
    return {}
  if config.get("dense_act_fn", "gelu_new") != "gelu_new":
    raise CheckpointError(f"{path}: dense_act_fn {config['dense_act_fn']!r} is not supported (umT5 uses gelu_new)")
  renames = {"vocab_size": "vocab_size", "d_model": "d_model", "d_kv": "d_kv", "num_heads": "num_heads",
             "d_ff": "d_ff", "num_layers": "num_layers",
             "relative_attention_num_buckets": "relative_attention_num_buckets",
             "relative_attention_max_distance": "relative_attention_max_distance", "layer_norm_epsilon": "eps",
             "feed_forward_proj": "feed_forward_proj"}
  return {ours: config[theirs] for theirs, ours in renames.items() if theirs in config}


def detect_config(source: TensorSource, layout: Layout, progress: Progress = None) -> UMT5Config:
  """The UMT5Config of ``source``: tensor shapes, overridden by a umT5 config.json beside the weights."""
  names = key_rows.canonical_names(source.tensors, _templates(layout).aliases)
  fields = config_fields_from_shapes({key: source.shapes[name] for key, name in names.items()}, layout)
  fields.setdefault("relative_attention_max_distance", DEFAULT_MAX_DISTANCE)
  json_config = source.read_config_json()
  if json_config is not None:
    json_fields = config_fields_from_json(json_config, source.config_path)
    if not json_fields:
      report(progress, f"ignoring {source.config_path}: not a umT5 config")
    fields.update(json_fields)
  undetermined = [name for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers",
                                    "relative_attention_num_buckets") if name not in fields]
  if undetermined:
    raise CheckpointError(f"{source.path}: cannot determine {', '.join(undetermined)} (no umT5 config.json and the "
                          "tensors that fix them are missing)")
  try:
    return UMT5Config.from_dict(fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source.path}: inconsistent config {fields}: {e}") from e


# ----------------------------------------------------------------------------------------------------------
# Conversion and loading
# ----------------------------------------------------------------------------------------------------------

def convert_umt5_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "bfloat16",
                            config: UMT5Config | None = None, overwrite: bool = False,
                            progress: Progress = print) -> UMT5Config:
  """Converts the umT5 encoder at ``src`` into a converted checkpoint directory ``dst``.

  Args:
    src: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (or the Wan2.1 release directory holding it), a diffusers
      repo root or its ``text_encoder/``, a transformers ``UMT5EncoderModel`` directory, or a safetensors /
      torch file of either layout.
    dst: the directory to create.
    dtype: 'bfloat16' (default: the released weights are bf16, so nothing is lost) or 'float32'.
    config: the architecture, skipping detection (it is still checked against the tensors).
    overwrite: replace an existing ``dst``.
    progress: called with one-line status messages; None for silence.

  Returns:
    The UMT5Config written to ``dst/config.json``.

  Raises:
    CheckpointError: unreadable source, unknown layout, or keys / shapes that do not match (all listed); raised
      before anything is written.
  """
  start = time.perf_counter()
  storage.target_dtype(dtype)
  storage.check_destination(dst, overwrite)
  source = open_source(src)
  layout = detect_layout(set(source.tensors))
  cfg = config if config is not None else detect_config(source, layout, progress)
  aliases = _templates(layout).aliases
  table = key_rows.resolve_aliases(source_key_table(cfg, layout), source.tensors, aliases)
  shapes = target_shapes(cfg)
  key_rows.check_source(source, key_rows.expected_shapes(table, shapes),
                        f"a umT5 encoder ({layout} layout, vocab_size={cfg.vocab_size}, d_model={cfg.d_model}, "
                        f"num_heads={cfg.num_heads}, d_kv={cfg.d_kv}, d_ff={cfg.d_ff}, num_layers={cfg.num_layers}, "
                        f"buckets={cfg.relative_attention_num_buckets})", aliases)
  source_dtypes = sorted({source.tensors[key].dtype_name for key in table})
  report(progress, f"{source.path}: {layout} layout, {len(table)} tensors ({', '.join(source_dtypes)}) -> {dtype}; "
                   f"d_model={cfg.d_model} heads={cfg.num_heads} d_ff={cfg.d_ff} layers={cfg.num_layers}")
  conversion = {"model": "umt5-encoder", "source": str(source.path.resolve()), "source_dtypes": source_dtypes,
                "layout": layout, "dtype": dtype, "num_tensors": len(table)}
  storage.write_tensors(dst, source, table, shapes, cfg, conversion, dtype=dtype, overwrite=overwrite,
                        progress=progress, start=start)
  return cfg


def read_umt5_config(path: str | os.PathLike) -> UMT5Config:
  """The UMT5Config of a converted umT5 checkpoint."""
  return storage.read_config(path, UMT5Config.from_dict, KIND, "umt5")


def load_umt5(path: str | os.PathLike, policy: PrecisionPolicy = PrecisionPolicy(), *,
              mesh: jax.sharding.Mesh | None = None, rules=sharding_lib.DEFAULT_RULES) -> UMT5Encoder:
  """The encoder stored at ``path`` (written by ``convert_umt5_checkpoint``).

  Parameters are restored straight into ``policy.param_dtype`` (norm scales and bias tables stay float32) and,
  with ``mesh``, into the ``NamedSharding`` that ``rules`` give their logical axes; nothing is initialised.
  """
  cfg = read_umt5_config(path)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, policy, rngs=nnx.Rngs(0)))
  graphdef, params_abs, rest = nnx.split(abstract, nnx.Param, ...)
  shardings = nnx.to_pure_dict(sharding_lib.mesh_shardings(params_abs, mesh, rules)) if mesh is not None else None
  nnx.replace_by_pure_dict(params_abs, storage.restore_into(path, nnx.to_pure_dict(params_abs), shardings))
  return nnx.merge(graphdef, params_abs, rest)
