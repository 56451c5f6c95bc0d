"""Moving parameter trees in and out of a ``WanDiT``.

The canonical tree (the one converted checkpoints store) is the scanned layout: every block leaf
has a leading [num_layers] axis. An unscanned model takes the same tree, sliced per layer.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from rehyat_jax.core.adapters import TEACHER_PARAMS


def _shape_tree(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)


def canonical_to_model_layout(tree: dict, *, scan_layers: bool, num_layers: int) -> dict:
  """Canonical (stacked) tree -> the pure-dict layout of a model with or without layer scan."""
  if scan_layers:
    return tree
  out = dict(tree)
  out["blocks"] = {i: jax.tree_util.tree_map(lambda a, i=i: a[i], tree["blocks"]) for i in range(num_layers)}
  return out


def model_to_canonical_layout(tree: dict, *, scan_layers: bool, num_layers: int) -> dict:
  if scan_layers:
    return tree
  out = dict(tree)
  per_layer = [tree["blocks"][i] for i in range(num_layers)]
  out["blocks"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
  return out


def load_params(model: nnx.Module, canonical: dict, *, strict: bool = True) -> None:
  """Write a canonical parameter tree into ``model`` (in place), casting to each parameter's dtype.

  The tree holds the teacher's parameters (a student's feature maps keep their values). With
  ``strict`` it must cover exactly those leaves with equal shapes; otherwise a ValueError lists
  every difference.
  """
  run = model.run
  state = nnx.state(model, TEACHER_PARAMS)
  current = nnx.to_pure_dict(state)
  incoming = canonical_to_model_layout(canonical, scan_layers=run.scan_layers, num_layers=model.cfg.num_layers)
  want = dict(jax.tree_util.tree_flatten_with_path(_shape_tree(current))[0])
  have = dict(jax.tree_util.tree_flatten_with_path(_shape_tree(incoming))[0])
  if strict:
    problems = [f"missing {jax.tree_util.keystr(k)}" for k in want if k not in have]
    problems += [f"unexpected {jax.tree_util.keystr(k)}" for k in have if k not in want]
    problems += [f"shape {jax.tree_util.keystr(k)}: model {want[k]} vs checkpoint {have[k]}"
                 for k in want if k in have and want[k] != have[k]]
    if problems:
      raise ValueError("parameter tree does not fit the model:\n  " + "\n  ".join(problems))
  flat_current = dict(jax.tree_util.tree_flatten_with_path(current)[0])
  merged = {k: jax.numpy.asarray(v, dtype=flat_current[k].dtype)
            for k, v in jax.tree_util.tree_flatten_with_path(incoming)[0] if k in flat_current}
  treedef = jax.tree_util.tree_structure(current)
  leaves = [merged.get(k, v) for k, v in jax.tree_util.tree_flatten_with_path(current)[0]]
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, leaves))
  nnx.update(model, state)


def canonical_params(model: nnx.Module) -> dict:
  """The model's teacher parameters as a canonical (stacked) tree of numpy arrays."""
  tree = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.state(model, TEACHER_PARAMS)))
  return model_to_canonical_layout(tree, scan_layers=model.run.scan_layers, num_layers=model.cfg.num_layers)
