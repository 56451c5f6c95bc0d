"""One read interface over a checkpoint's tensors, whether safetensors (memory-mapped) or a torch
pickle (.pth / .pt / .bin / .ckpt, needs torch): shapes and dtype names up front, bytes on demand.

The umT5 and VAE converters read through it; the DiT converter reads safetensors only
(``safetensors_source``), which this module also wraps.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from rehyat_jax.convert.safetensors_source import (DTYPE_NAMES, CheckpointError, open_safetensors_source,
                                                   read_tensor)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclasses.dataclass(frozen=True)
class TensorSource:
  """The tensors of a checkpoint file (or sharded set)."""

  path: Path  # the file (or shard index) read
  shapes: dict[str, tuple[int, ...]]
  dtype_names: dict[str, str]  # safetensors names (F32, BF16, ...), or torch's for other dtypes
  read: Callable[[str], np.ndarray]  # key -> array (a memory-mapped view where possible)
  order: tuple[str, ...]  # keys in the order that reads the files sequentially
  config_path: Path | None  # config.json next to the weights, if any


def open_safetensors(path: str | Path) -> TensorSource:
  """A .safetensors file, a shard index, or a directory holding either."""
  source = open_safetensors_source(path)
  order = tuple(sorted(source.tensors, key=lambda k: (str(source.tensors[k].file), source.tensors[k].offset)))
  return TensorSource(path=source.path, shapes=source.shapes(),
                      dtype_names={key: DTYPE_NAMES[info.dtype] for key, info in source.tensors.items()},
                      read=lambda key: read_tensor(source.tensors[key]), order=order,
                      config_path=source.config_path)


def open_torch_file(file: Path, *, config_name: str | None = None) -> TensorSource:
  """A PyTorch state dict file; ``config_name`` names a config file looked for beside it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError(f"{file}: reading a PyTorch checkpoint (.pth / .pt / .bin / .ckpt) needs torch, which is not "
                          "installed: pip install torch (the CPU build is enough), or convert from safetensors") from e
  # Zip-format files (torch >= 1.6) can be memory-mapped; the legacy format must be read whole.
  mmap = zipfile.is_zipfile(file)
  try:
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
  except Exception as e:  # torch raises many types for corrupt or non-checkpoint files
    raise CheckpointError(f"{file}: cannot load as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    kind = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
    raise CheckpointError(f"{file}: expected a state dict (a dict of tensors), found {kind}")
  dtype_names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

  def read(key: str) -> np.ndarray:
    tensor = state[key].detach().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
      return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()

  config_path = file.parent / config_name if config_name else None
  return TensorSource(path=file, shapes={key: tuple(t.shape) for key, t in state.items()},
                      dtype_names={key: dtype_names.get(t.dtype, str(t.dtype)) for key, t in state.items()},
                      read=read, order=tuple(state),
                      config_path=config_path if config_path is not None and config_path.is_file() else None)
