"""Converting a PyTorch umT5 encoder checkpoint into an Orbax checkpoint of ``UMT5Encoder``, and loading it back.

Two key layouts, each an explicit table (top-level keys, plus per-block templates formatted with the block
index):

- ``transformers``: ``UMT5EncoderModel`` as saved by ``save_pretrained`` (diffusers' Wan ``text_encoder/``
  folder, ``google/umt5-xxl``): ``shared.weight``, ``encoder.block.N.layer.{0,1}...``,
  ``encoder.final_layer_norm.weight``. ``encoder.embed_tokens.weight`` is tied to ``shared.weight``
  (transformers saves only ``shared.weight``); either name is accepted, and when both are present the tied copy
  is not read.
- ``wan``: Wan's own ``T5Encoder`` state dict, ``models_t5_umt5-xxl-enc-bf16.pth`` of the Wan2.1 release
  (names from ``wan/modules/t5.py``, which loads the file with a strict ``load_state_dict``): gate.0 is
  transformers' wi_0 (the GELU branch), fc1 is wi_1 (the linear branch), fc2 is wo.

Files: safetensors (single, sharded set, or a directory; no torch needed, via ``safetensors_source``) or a torch
pickle (``.pth`` / ``.pt`` / ``.bin``; needs torch, imported only then, memory-mapped when the file allows).
Either layout may come in either format. Steps: resolve and open the source -> ``detect_layout`` ->
``detect_config`` (shapes, then a transformers config.json, then an explicit config) -> ``check_source`` (every
missing, unexpected, mis-shaped or non-float tensor in one ``CheckpointError``) -> fill one preallocated buffer
per leaf -> ``write_converted`` (shared with the DiT converter): ``dst/{config.json, conversion.json, params/}``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import numpy as np
from flax import nnx

from rehyat_jax.convert.key_table import TargetSlot, Transform, source_shape, tree_get
from rehyat_jax.convert.safetensors_source import INDEX_SUFFIX, CheckpointError
from rehyat_jax.convert.tensor_source import TORCH_SUFFIXES, TensorSource, open_safetensors, open_torch_file
from rehyat_jax.convert.wan_dit import (CONFIG_FILE, SOURCE_FLOAT_DTYPES, PARAMS_DIR, TARGET_DTYPES, copy_into, restore_params,
                                        write_converted)
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.umt5 import UMT5Config, UMT5Encoder

Layout = Literal["transformers", "wan"]
Shape = tuple[int, ...]
Progress = Callable[[str], None] | None
Entry = tuple[tuple[str, ...], Transform]

LAYOUTS: tuple[Layout, ...] = ("transformers", "wan")
WAN_T5_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
MAX_LISTED_PER_PROBLEM = 20
# Wan's T5RelativeEmbedding default, and transformers' UMT5Config default; no tensor records it.
DEFAULT_MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class LayoutTable:
  """One layout's key names: top-level keys and block templates ({i} = block index) -> (target path, transform);
  ``block_prefix`` + index + '.' starts every block key; ``tied`` maps an alias key to the key it duplicates."""

  top_level: dict[str, Entry]
  block: dict[str, Entry]
  block_prefix: str
  tied: dict[str, str]


_TRANSFORMERS = LayoutTable(
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
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight": (("attn", "relative_bias"), "copy"),
        "encoder.block.{i}.layer.1.layer_norm.weight": (("ffn_norm", "scale"), "copy"),
        "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight": (("ffn", "wi_0", "kernel"), "linear"),
        "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight": (("ffn", "wi_1", "kernel"), "linear"),
        "encoder.block.{i}.layer.1.DenseReluDense.wo.weight": (("ffn", "wo", "kernel"), "linear"),
    },
    block_prefix="encoder.block.",
    tied={"encoder.embed_tokens.weight": "shared.weight"},
)

_WAN = LayoutTable(
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
    block_prefix="blocks.",
    tied={},
)

LAYOUT_TABLES: dict[Layout, LayoutTable] = {"transformers": _TRANSFORMERS, "wan": _WAN}


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


def source_key_table(cfg: UMT5Config, layout: Layout) -> dict[str, TargetSlot]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its target slot (2 top-level + 10 per block)."""
  table = _layout_table(layout)
  slots = {key: TargetSlot(path, None, transform) for key, (path, transform) in table.top_level.items()}
  for i in range(cfg.num_layers):
    for template, (path, transform) in table.block.items():
      slots[template.format(i=i)] = TargetSlot(("blocks",) + path, i, transform)
  return slots


def expected_source_keys(cfg: UMT5Config, layout: Layout) -> dict[str, Shape]:
  """Every key a ``layout`` checkpoint of ``cfg`` must hold -> its torch shape."""
  shapes = target_shapes(cfg)
  return {key: source_shape(slot, tree_get(shapes, slot.path)) for key, slot in source_key_table(cfg, layout).items()}


def block_index(key: str, layout: Layout) -> int | None:
  """N of a block key of ``layout`` (``encoder.block.N.`` / ``blocks.N.``); None for other keys."""
  prefix = _layout_table(layout).block_prefix
  if not key.startswith(prefix):
    return None
  index = key[len(prefix):].split(".", 1)[0]
  return int(index) if index.isdigit() else None


def layout_scores(keys: list[str] | set[str]) -> dict[Layout, int]:
  """How many of ``keys`` are names of each layout (block keys count whatever their index)."""
  scores: dict[Layout, int] = {}
  for layout, table in LAYOUT_TABLES.items():
    names = set(table.top_level) | set(table.tied)
    block_names = {template.format(i=0) for template in table.block}
    count = 0
    for key in keys:
      index = block_index(key, layout)
      if index is not None:
        count += key.replace(f"{table.block_prefix}{index}.", f"{table.block_prefix}0.", 1) in block_names
      else:
        count += key in names
    scores[layout] = count
  return scores


def _layout_table(layout: str) -> LayoutTable:
  if layout not in LAYOUT_TABLES:
    raise ValueError(f"unknown umT5 checkpoint layout {layout!r}; expected one of {LAYOUTS}")
  return LAYOUT_TABLES[layout]


# ----------------------------------------------------------------------------------------------------------
# Sources: safetensors or a torch pickle, behind one interface
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
  weights = resolve_weights(path)
  if weights.is_file() and weights.suffix in TORCH_SUFFIXES:
    return open_torch_file(weights, config_name=CONFIG_FILE)
  return open_safetensors(weights)


# ----------------------------------------------------------------------------------------------------------
# Detection and validation
# ----------------------------------------------------------------------------------------------------------

def detect_layout(keys: list[str] | set[str]) -> Layout:
  """'transformers' or 'wan', whichever names more of ``keys``."""
  scores = layout_scores(keys)
  best = max(scores.values())
  winners = [layout for layout, score in scores.items() if score == best]
  if best == 0 or len(winners) > 1:
    sample = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise CheckpointError(f"unknown checkpoint layout: the keys match neither transformers' UMT5EncoderModel nor "
                          f"Wan's T5Encoder names (scores {scores}); first keys: {sample}")
  return winners[0]


def resolve_tied_keys(keys: list[str] | set[str], layout: Layout) -> dict[str, str]:
  """Table key -> the source key holding it: a tied alias stands in for its key when only the alias is present."""
  table = _layout_table(layout)
  present = set(keys)
  names = {key: key for key in present if key not in table.tied}
  for alias, key in table.tied.items():
    if alias in present and key not in present:
      names[key] = alias
  return names


def config_fields_from_shapes(shapes: dict[str, Shape], layout: Layout) -> dict[str, Any]:
  """The UMT5Config fields that the tensor shapes fix (what is present); ``shapes`` keyed by table names."""
  table = _layout_table(layout)
  fields: dict[str, Any] = {}
  indices = [i for i in map(lambda key: block_index(key, layout), shapes) if i is not None]
  if indices:
    fields["num_layers"] = max(indices) + 1

  def first(target: tuple[str, ...]) -> Shape:
    keys = [key for key, (path, _) in table.top_level.items() if path == target]
    keys += [template.format(i=i) for template, (path, _) in table.block.items() if path == target
             for i in range(fields.get("num_layers", 0))]
    return next((shapes[key] for key in keys if key in shapes), ())

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
  names = resolve_tied_keys(source.shapes, layout)
  fields = config_fields_from_shapes({key: source.shapes[name] for key, name in names.items()}, layout)
  fields.setdefault("relative_attention_max_distance", DEFAULT_MAX_DISTANCE)
  if source.config_path is not None:
    try:
      json_config = json.loads(source.config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{source.config_path}: unreadable config ({e})") from e
    json_fields = config_fields_from_json(json_config, source.config_path)
    if not json_fields:
      _report(progress, f"ignoring {source.config_path}: not a umT5 config")
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


def check_source(source: TensorSource, layout: Layout, cfg: UMT5Config) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor."""
  table = _layout_table(layout)
  expected = expected_source_keys(cfg, layout)
  names = resolve_tied_keys(source.shapes, layout)
  found = {key: source.shapes[name] for key, name in names.items()}
  # A tied alias next to its key is not read, but must still have the key's shape.
  tied_copies = {alias: key for alias, key in table.tied.items() if alias in source.shapes and key in source.shapes}
  missing = [f"{key}  expected {list(shape)}" for key, shape in expected.items() if key not in found]
  unexpected = [f"{names[key]}  {list(found[key])}" for key in sorted(found) if key not in expected]
  mismatched = [f"{names[key]}: expected {list(shape)}, found {list(found[key])}"
                for key, shape in expected.items() if key in found and tuple(found[key]) != shape]
  mismatched += [f"{alias}: expected {list(expected[key])} (tied to {key}), found {list(source.shapes[alias])}"
                 for alias, key in tied_copies.items() if tuple(source.shapes[alias]) != expected[key]]
  not_float = [f"{names[key]}: {source.dtype_names[names[key]]} (expected F32, F16, BF16 or F64)"
               for key in expected if key in found and source.dtype_names[names[key]] not in SOURCE_FLOAT_DTYPES]
  problems = [(missing, "missing key", "missing keys"), (unexpected, "unexpected key", "unexpected keys"),
              (mismatched, "shape mismatch", "shape mismatches"),
              (not_float, "tensor with an unsupported dtype", "tensors with an unsupported dtype")]
  if not any(items for items, _, _ in problems):
    return
  lines = [f"{source.path} does not match a umT5 encoder ({layout} layout, vocab_size={cfg.vocab_size}, "
           f"d_model={cfg.d_model}, num_heads={cfg.num_heads}, d_kv={cfg.d_kv}, d_ff={cfg.d_ff}, "
           f"num_layers={cfg.num_layers}, buckets={cfg.relative_attention_num_buckets}):"]
  for items, singular, plural in problems:
    if items:
      lines.append(f"  {len(items)} {singular if len(items) == 1 else plural}:")
      lines.extend(f"    {item}" for item in items[:MAX_LISTED_PER_PROBLEM])
      if len(items) > MAX_LISTED_PER_PROBLEM:
        lines.append(f"    ... and {len(items) - MAX_LISTED_PER_PROBLEM} more")
  raise CheckpointError("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Conversion
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
  if dtype not in TARGET_DTYPES:
    raise CheckpointError(f"unsupported target dtype {dtype!r}; choose one of {sorted(TARGET_DTYPES)}")
  if Path(dst).exists() and not overwrite:  # fail before the (long) conversion, not after it
    raise CheckpointError(f"{dst} already exists; pass overwrite=True to replace it")
  source = open_source(src)
  layout = detect_layout(set(source.shapes))
  cfg = config if config is not None else detect_config(source, layout, progress)
  check_source(source, layout, cfg)
  slots = source_key_table(cfg, layout)
  names = resolve_tied_keys(source.shapes, layout)
  source_dtypes = sorted({source.dtype_names[names[key]] for key in slots})
  _report(progress, f"{source.path}: {layout} layout, {len(slots)} tensors ({', '.join(source_dtypes)}) -> {dtype}; "
                    f"d_model={cfg.d_model} heads={cfg.num_heads} d_ff={cfg.d_ff} layers={cfg.num_layers}")

  target_dtype = TARGET_DTYPES[dtype]
  params = jax.tree_util.tree_map(lambda shape: np.empty(shape, target_dtype), target_shapes(cfg),
                                  is_leaf=lambda leaf: isinstance(leaf, tuple))
  by_source_name = {names[key]: key for key in slots}
  for count, name in enumerate((name for name in source.order if name in by_source_name), 1):
    slot = slots[by_source_name[name]]
    destination = tree_get(params, slot.path)
    if slot.layer is not None:
      destination = destination[slot.layer]
    copy_into(destination, source.read(name), slot.transform)
    if count % 50 == 0 or count == len(slots):
      _report(progress, f"converted {count}/{len(slots)} tensors, {time.perf_counter() - start:.1f} s")

  conversion = {
      "model": "umt5-encoder",
      "source": str(source.path.resolve()),
      "source_dtypes": source_dtypes,
      "layout": layout,
      "dtype": dtype,
      "num_tensors": len(slots),
      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "seconds_to_convert": round(time.perf_counter() - start, 2),
  }
  # write_converted only needs ``cfg.to_json()``: it is the DiT converter's, shared.
  write_converted(dst, params, cfg, conversion, overwrite=overwrite)
  _report(progress, f"done: {dst} in {time.perf_counter() - start:.1f} s")
  return cfg


# ----------------------------------------------------------------------------------------------------------
# Reading a converted checkpoint
# ----------------------------------------------------------------------------------------------------------

def read_umt5_config(path: str | os.PathLike) -> UMT5Config:
  """The UMT5Config of a converted umT5 checkpoint."""
  path = Path(path)
  config_file = path / CONFIG_FILE
  if not config_file.is_file() or not (path / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{path} is not a converted umT5 checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/; "
                          "create one with rehyat_jax.convert.umt5.convert_umt5_checkpoint)")
  try:
    return UMT5Config.from_dict(json.loads(config_file.read_text()))
  except (TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
    raise CheckpointError(f"{config_file}: not a umT5 config ({e})") from e


def load_umt5(path: str | os.PathLike, policy: PrecisionPolicy = PrecisionPolicy(), *,
              mesh: jax.sharding.Mesh | None = None, rules=sharding_lib.DEFAULT_RULES) -> UMT5Encoder:
  """The encoder stored at ``path`` (written by ``convert_umt5_checkpoint``).

  Parameters are restored straight into ``policy.param_dtype`` (norm scales and bias tables stay float32) and,
  with ``mesh``, into the ``NamedSharding`` that ``rules`` give their logical axes; nothing is initialised.
  """
  cfg = read_umt5_config(path)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, policy, rngs=nnx.Rngs(0)))
  graphdef, params_abs, rest = nnx.split(abstract, nnx.Param, ...)
  target = nnx.to_pure_dict(params_abs)
  if mesh is not None:
    shardings = nnx.to_pure_dict(sharding_lib.mesh_shardings(params_abs, mesh, rules))
  else:
    shardings = jax.tree_util.tree_map(lambda _: None, target)
  target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
  nnx.replace_by_pure_dict(params_abs, restore_params(path, target))
  return nnx.merge(graphdef, params_abs, rest)


def _report(progress: Progress, message: str) -> None:
  if progress is not None:
    progress(message)
