"""Key tables: which source tensor fills which leaf of a converted parameter tree, and how its layout changes.

A key table is ``dict[str, KeyRow]``, source key -> row. Every converter builds its tables from explicit
literals, never from string replacement: ``KeyTemplates`` expands a layout's top-level keys and per-block
templates (``{i}`` = block index; block tensors fill row i of leaves that lead with a [num_layers] axis), or a
converter lists its rows itself (the VAE walks its modules).

Shapes have one source of truth, the target tree of shapes: the torch shape a source tensor must have is
derived from its target leaf by undoing the row's transform (``source_shape``). ``check_source`` then reports
every missing, unexpected, mis-shaped or non-float tensor in one ``CheckpointError``, before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Literal, Mapping

import numpy as np

from rehyat_jax.convert.sources import SOURCE_FLOAT_DTYPES, CheckpointError, TensorSource

# linear: nn.Linear weight [out, in] -> kernel [in, out]; conv3d: [out, in, kt, kh, kw] -> [kt, kh, kw, in, out];
# conv2d: [out, in, kh, kw] -> [kh, kw, in, out]; norm_video / norm_image: the VAE's RMS_norm gamma
# [C, 1, 1, 1] / [C, 1, 1] -> [C]; copy: unchanged.
Transform = Literal["linear", "conv3d", "conv2d", "norm_video", "norm_image", "copy"]
Shape = tuple[int, ...]
ParamPath = tuple[str | int, ...]
Entry = tuple[tuple[str, ...], Transform]  # a literal table's value: (target path, transform)

# Target axis j is source axis _TO_JAX_AXES[transform][j].
_TO_JAX_AXES: dict[str, tuple[int, ...]] = {"linear": (1, 0), "conv3d": (2, 3, 4, 1, 0), "conv2d": (2, 3, 1, 0)}
# RMS_norm gammas broadcast over the trailing (T, H, W) / (H, W) axes of the source.
_SQUEEZED_AXES: dict[str, int] = {"norm_video": 3, "norm_image": 2}
# Source rows copied per step of a transposing copy: row blocks keep the strided reads cache-friendly
# (about twice as fast as one whole-matrix strided copy).
COPY_ROWS_PER_BLOCK = 256
MAX_LISTED_PER_PROBLEM = 20


@dataclasses.dataclass(frozen=True)
class KeyRow:
  """One source tensor: ``key`` fills ``tree[path][layer]`` (``tree[path]`` when ``layer`` is None), after
  ``transform``."""

  key: str
  path: ParamPath
  transform: Transform
  layer: int | None = None


# ----------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------

def source_shape(row: KeyRow, target_leaf_shape: Shape) -> Shape:
  """The torch shape of the tensor that fills ``row`` of a leaf of ``target_leaf_shape``."""
  shape = tuple(target_leaf_shape[1:] if row.layer is not None else target_leaf_shape)
  if row.transform in _TO_JAX_AXES:
    from_jax = np.argsort(_TO_JAX_AXES[row.transform])
    return tuple(shape[axis] for axis in from_jax)
  if row.transform in _SQUEEZED_AXES:
    return shape + (1,) * _SQUEEZED_AXES[row.transform]
  return shape


def to_target_layout(tensor: np.ndarray, transform: Transform) -> np.ndarray:
  """A view of a torch-layout tensor in the JAX layout (no copy)."""
  if transform in _TO_JAX_AXES:
    return tensor.transpose(_TO_JAX_AXES[transform])
  if transform in _SQUEEZED_AXES:
    return tensor.reshape(tensor.shape[0])
  return tensor


def copy_into(destination: np.ndarray, tensor: np.ndarray, transform: Transform) -> None:
  """Writes a torch-layout ``tensor`` into ``destination`` in the JAX layout, casting to its dtype."""
  if transform == "linear" and tensor.ndim == 2:
    for row in range(0, tensor.shape[0], COPY_ROWS_PER_BLOCK):
      rows = slice(row, row + COPY_ROWS_PER_BLOCK)
      np.copyto(destination[:, rows], tensor[rows].T, casting="unsafe")
  else:
    np.copyto(destination, to_target_layout(tensor, transform), casting="unsafe")


def tree_get(tree: dict[Any, Any], path: ParamPath) -> Any:
  """``tree[path[0]][path[1]]...``."""
  for name in path:
    tree = tree[name]
  return tree


def expected_shapes(table: Mapping[str, KeyRow], target_shapes: dict[Any, Any]) -> dict[str, Shape]:
  """Every key of ``table`` -> the torch shape its tensor must have, given the target tree of shapes."""
  return {key: source_shape(row, tree_get(target_shapes, row.path)) for key, row in table.items()}


# ----------------------------------------------------------------------------------------------------------
# Templated tables
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KeyTemplates:
  """One checkpoint layout's keys as literals: top-level keys and block templates (``block_prefix`` + ``{i}.``
  + name) -> (target path, transform); block targets live under ``block_path``. ``aliases`` maps a key that may
  stand in for a table key (a tied copy) to that key."""

  top_level: dict[str, Entry]
  block: dict[str, Entry]
  block_prefix: str = "blocks."
  block_path: tuple[str, ...] = ("blocks",)
  aliases: dict[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    start = self.block_prefix + "{i}."
    if not all(template.startswith(start) for template in self.block):
      raise ValueError(f"every block template must start with {start!r}")

  def block_names(self) -> frozenset[str]:
    """The block keys without their ``block_prefix`` + index + '.' (the same for every block)."""
    return frozenset(template[len(self.block_prefix + "{i}."):] for template in self.block)

  def split_block_key(self, key: str) -> tuple[int, str] | None:
    """``'blocks.7.attn.q.weight'`` -> ``(7, 'attn.q.weight')``; None for keys outside ``block_prefix`` + N + '.'."""
    if not key.startswith(self.block_prefix):
      return None
    index, dot, name = key[len(self.block_prefix):].partition(".")
    return (int(index), name) if index.isdigit() and dot else None

  def num_layers(self, keys: Collection[str]) -> int:
    """1 + the highest block index among ``keys`` (0 without blocks)."""
    indices = [block[0] for block in map(self.split_block_key, keys) if block is not None]
    return max(indices) + 1 if indices else 0

  def score(self, keys: Collection[str]) -> int:
    """How many of ``keys`` are names of this layout (block keys count whatever their index)."""
    top_level, block_names = set(self.top_level) | set(self.aliases), self.block_names()
    count = 0
    for key in keys:
      block = self.split_block_key(key)
      count += (block[1] in block_names) if block is not None else (key in top_level)
    return count

  def rows(self, num_layers: int) -> dict[str, KeyRow]:
    """The key table of a model of ``num_layers`` blocks: top-level keys, then block 0, block 1, ..."""
    table = {key: KeyRow(key, path, transform) for key, (path, transform) in self.top_level.items()}
    for i in range(num_layers):
      for template, (path, transform) in self.block.items():
        key = template.format(i=i)
        table[key] = KeyRow(key, self.block_path + path, transform, i)
    return table


def detect_layout(keys: Collection[str], layouts: Mapping[str, KeyTemplates], names: str) -> str:
  """The layout naming most of ``keys``; ``names`` describes the layouts for the error ('A nor B')."""
  scores = {layout: templates.score(keys) for layout, templates in layouts.items()}
  best = max(scores.values())
  winners = [layout for layout, score in scores.items() if score == best]
  if best == 0 or len(winners) > 1:
    sample = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise CheckpointError(f"unknown checkpoint layout: the keys match neither {names} names (scores {scores}); "
                          f"first keys: {sample}")
  return winners[0]


def canonical_names(keys: Collection[str], aliases: Mapping[str, str]) -> dict[str, str]:
  """Table key -> the source key holding it: an alias stands in for its key when only the alias is present."""
  present = set(keys)
  names = {key: key for key in present if key not in aliases}
  for alias, key in aliases.items():
    if alias in present and key not in present:
      names[key] = alias
  return names


def resolve_aliases(table: dict[str, KeyRow], keys: Collection[str], aliases: Mapping[str, str]) -> dict[str, KeyRow]:
  """``table`` keyed by the source keys that hold its tensors (see ``canonical_names``)."""
  names = canonical_names(keys, aliases)
  resolved = {}
  for key, row in table.items():
    name = names.get(key, key)
    resolved[name] = row if name == key else dataclasses.replace(row, key=name)
  return resolved


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------

def check_source(source: TensorSource, expected: dict[str, Shape], description: str,
                 aliases: Mapping[str, str] | None = None) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor.

  ``expected``: source key -> torch shape (``expected_shapes`` of a table, aliases resolved); ``description``
  completes '<source> does not match ...'. An alias present next to its key is not read, but must still have the
  key's shape.
  """
  found = source.shapes
  tied_copies = {alias: key for alias, key in (aliases or {}).items() if alias in found and key in found}
  missing = [f"{key}  expected {list(shape)}" for key, shape in expected.items() if key not in found]
  unexpected = [f"{key}  {list(found[key])}" for key in sorted(found) if key not in expected and key not in tied_copies]
  mismatched = [f"{key}: expected {list(shape)}, found {list(found[key])}"
                for key, shape in expected.items() if key in found and tuple(found[key]) != shape]
  mismatched += [f"{alias}: expected {list(expected[key])} (tied to {key}), found {list(found[alias])}"
                 for alias, key in tied_copies.items() if key in expected and tuple(found[alias]) != expected[key]]
  not_float = [f"{key}: {source.tensors[key].dtype_name} (expected F32, F16, BF16 or F64)"
               for key in expected if key in found and source.tensors[key].dtype_name not in SOURCE_FLOAT_DTYPES]
  problems = [(missing, "missing key", "missing keys"), (unexpected, "unexpected key", "unexpected keys"),
              (mismatched, "shape mismatch", "shape mismatches"),
              (not_float, "tensor with an unsupported dtype", "tensors with an unsupported dtype")]
  if not any(items for items, _, _ in problems):
    return
  lines = [f"{source.path} does not match {description}:"]
  for items, singular, plural in problems:
    if items:
      lines.append(f"  {len(items)} {singular if len(items) == 1 else plural}:")
      lines.extend(f"    {item}" for item in items[:MAX_LISTED_PER_PROBLEM])
      if len(items) > MAX_LISTED_PER_PROBLEM:
        lines.append(f"    ... and {len(items) - MAX_LISTED_PER_PROBLEM} more")
  raise CheckpointError("\n".join(lines))
