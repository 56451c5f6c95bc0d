"""The one read interface of the converters: ``TensorSource``, the tensors of a checkpoint by key, with shapes and
dtypes known up front (from headers only) and bytes read on demand, one tensor at a time.

Two file formats open into it:

- safetensors (``open_safetensors_source``: a single file, a sharded set via its ``*.safetensors.index.json``, or a
  directory holding either): each tensor is a read-only memory-mapped view, so a converter copies its bytes
  exactly once, into their destination. The header reader and the views are hand-written instead of using the
  ``safetensors`` package because its numpy framework cannot return bfloat16 tensors (numpy has no bfloat16 type:
  ``safe_open(f, "np").get_tensor`` raises ``TypeError: data type 'bfloat16' not understood``), and the released
  Wan2.1 weights are often bf16; it also copies every tensor it returns. The format is small and fixed
  (the safetensors library's documented format): an 8-byte little-endian header length N, N bytes of JSON
  ``{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the little-endian
  tensor bytes, offsets counted from the end of the header. bfloat16 bytes are viewed as ``ml_dtypes.bfloat16``.
- a torch pickle (``open_torch_source``: .pth / .pt / .bin / .ckpt; needs torch, imported only then, and
  memory-mapped when the file allows).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

Shape = tuple[int, ...]

# Single-file repackagings (e.g. Comfy-Org/Wan_2.1_ComfyUI_repackaged) put the original keys under this prefix.
SINGLE_FILE_PREFIX = "model.diffusion_model."
INDEX_SUFFIX = ".safetensors.index.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# The safetensors library refuses headers above 100 MB; anything larger is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# The dtypes a converter accepts as weights (safetensors names; torch files use the same names for them).
SOURCE_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or that does not match what the converter expects."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lives: ``nbytes`` bytes at ``offset`` of ``file`` (a byte offset in a safetensors file, the
  position in the state dict of a torch file: either way, sorting by it reads the file front to back)."""

  name: str  # the key as stored in the file (before any prefix is stripped)
  file: Path
  dtype_name: str  # safetensors names (F32, BF16, ...); torch's own (torch.int32, ...) for others in torch files
  shape: Shape
  offset: int
  nbytes: int

  @property
  def dtype(self) -> np.dtype | None:
    """The numpy dtype of the stored values; None for a torch dtype without a safetensors name."""
    return SAFETENSORS_DTYPES.get(self.dtype_name)


@dataclasses.dataclass(frozen=True)
class TensorSource:
  """The tensors of a checkpoint, by key (with ``stripped_prefix`` removed), and where its config lives."""

  path: Path  # what the caller named
  files: tuple[Path, ...]
  tensors: dict[str, TensorInfo]
  config_path: Path | None  # a config file next to the weights, if any
  reader: Callable[[TensorInfo], np.ndarray]  # a view where possible: read one tensor at a time
  stripped_prefix: str = ""

  @property
  def shapes(self) -> dict[str, Shape]:
    return {key: info.shape for key, info in self.tensors.items()}

  @property
  def dtype_names(self) -> dict[str, str]:
    return {key: info.dtype_name for key, info in self.tensors.items()}

  @property
  def total_bytes(self) -> int:
    return sum(info.nbytes for info in self.tensors.values())

  def read(self, key: str) -> np.ndarray:
    return self.reader(self.tensors[key])

  def read_config_json(self) -> dict | None:
    """The parsed config file next to the weights (None when there is none); CheckpointError if unreadable."""
    if self.config_path is None:
      return None
    try:
      return json.loads(self.config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{self.config_path}: unreadable config ({e})") from e

  def file_order(self, keys: Iterable[str]) -> list[str]:
    """``keys`` in the order that reads the files sequentially."""
    return sorted(keys, key=lambda key: (str(self.tensors[key].file), self.tensors[key].offset))


# ----------------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------------

def read_safetensors_header(file: str | os.PathLike) -> dict[str, TensorInfo]:
  """The tensors of one safetensors file, from its header only; checks that every tensor's bytes are present."""
  file = Path(file)
  try:
    size = file.stat().st_size
    with open(file, "rb") as f:
      length_field = f.read(8)
      if len(length_field) < 8:
        raise CheckpointError(f"{file}: truncated or not a safetensors file ({size} bytes, shorter than the "
                              "8-byte header length)")
      (header_len,) = struct.unpack("<Q", length_field)
      if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{file}: not a safetensors file (declares a {header_len}-byte header)")
      if 8 + header_len > size:
        raise CheckpointError(f"{file}: truncated (declares a {header_len}-byte header but only "
                              f"{size - 8} bytes follow)")
      header_bytes = f.read(header_len)
  except OSError as e:
    raise CheckpointError(f"{file}: cannot read ({e.strerror or e})") from e
  try:
    header = json.loads(header_bytes)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")

  data_start = 8 + header_len
  data_size = size - data_start
  tensors: dict[str, TensorInfo] = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    info = _tensor_info(file, name, entry, data_start)
    end = info.offset - data_start + info.nbytes
    if end > data_size:
      raise CheckpointError(f"{file}: truncated ({data_size} data bytes, but tensor {name!r} needs bytes up "
                            f"to {end})")
    tensors[name] = info
  return tensors


def _tensor_info(file: Path, name: str, entry: object, data_start: int) -> TensorInfo:
  """One header entry, checked for well-formedness."""
  try:
    dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    shape = tuple(int(d) for d in shape)
    begin, end = int(begin), int(end)
  except (TypeError, KeyError, ValueError) as e:
    raise CheckpointError(f"{file}: corrupt safetensors header entry for {name!r}: {entry!r}") from e
  if dtype_name not in SAFETENSORS_DTYPES:
    raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {dtype_name!r}")
  nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype_name].itemsize
  if begin < 0 or end - begin != nbytes or any(d < 0 for d in shape):
    raise CheckpointError(f"{file}: corrupt safetensors header entry for {name!r} ({dtype_name} {list(shape)} "
                          f"needs {nbytes} bytes, data_offsets say [{begin}, {end}])")
  return TensorInfo(name=name, file=file, dtype_name=dtype_name, shape=shape, offset=data_start + begin,
                    nbytes=nbytes)


def read_tensor(info: TensorInfo) -> np.ndarray:
  """A read-only, memory-mapped view of one safetensors tensor (no bytes are read until it is used)."""
  if info.nbytes == 0:
    return np.zeros(info.shape, info.dtype)
  try:
    raw = np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{info.file}: cannot map tensor {info.name!r} ({e})") from e
  return raw.view(info.dtype).reshape(info.shape)


def open_safetensors_source(path: str | os.PathLike) -> TensorSource:
  """Opens a checkpoint given as a .safetensors file, a ``*.safetensors.index.json`` of a sharded set, or a
  directory holding either (a diffusers repo root resolves to its ``transformer/`` subfolder).

  Keys of single-file repackagings, all prefixed ``model.diffusion_model.``, are returned without the prefix.
  """
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  weights = _resolve_weights(path)
  if weights.name.endswith(INDEX_SUFFIX):
    files, tensors = _read_sharded(weights)
  else:
    files, tensors = (weights,), read_safetensors_header(weights)

  prefix = ""
  if tensors and all(name.startswith(SINGLE_FILE_PREFIX) for name in tensors):
    prefix = SINGLE_FILE_PREFIX
    tensors = {name[len(prefix):]: info for name, info in tensors.items()}
  config_path = weights.parent / "config.json"
  return TensorSource(path=path, files=files, tensors=tensors,
                      config_path=config_path if config_path.is_file() else None, reader=read_tensor,
                      stripped_prefix=prefix)


def _resolve_weights(path: Path) -> Path:
  """The single .safetensors file or the shard index that ``path`` names or holds."""
  if path.is_file():
    if path.name.endswith(INDEX_SUFFIX) or path.suffix == ".safetensors":
      return path
    raise CheckpointError(f"{path}: expected a .safetensors file, a *{INDEX_SUFFIX} or a directory")
  indexes = sorted(path.glob("*" + INDEX_SUFFIX))
  singles = sorted(path.glob("*.safetensors"))
  transformer = path / "transformer"
  if not indexes and not singles and transformer.is_dir():
    return _resolve_weights(transformer)
  if len(indexes) == 1:
    return indexes[0]
  if len(indexes) > 1:
    raise CheckpointError(f"{path}: several shard indexes ({', '.join(p.name for p in indexes)}); "
                          "name the one to convert")
  if len(singles) == 1:
    return singles[0]
  if len(singles) > 1:
    raise CheckpointError(f"{path}: several .safetensors files and no *{INDEX_SUFFIX} "
                          f"({', '.join(p.name for p in singles)}); name the file to convert")
  raise CheckpointError(f"{path}: no .safetensors file or *{INDEX_SUFFIX} found")


def _read_sharded(index_path: Path) -> tuple[tuple[Path, ...], dict[str, TensorInfo]]:
  """The shard files and tensors of a sharded set; every key of the index must be in the shard it names."""
  try:
    weight_map = json.loads(index_path.read_text())["weight_map"]
    if not isinstance(weight_map, dict):
      raise TypeError("weight_map is not an object")
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"{index_path}: not a valid shard index ({e})") from e

  files = tuple(index_path.parent / name for name in sorted(set(weight_map.values())))
  tensors: dict[str, TensorInfo] = {}
  for file in files:
    if not file.is_file():
      raise CheckpointError(f"{index_path}: shard {file.name} is missing")
    for name, info in read_safetensors_header(file).items():
      if name in tensors:
        raise CheckpointError(f"{index_path}: tensor {name!r} is in both {tensors[name].file.name} and {file.name}")
      tensors[name] = info
  misplaced = [f"{name} (index: {shard}, found: {tensors[name].file.name if name in tensors else 'nowhere'})"
               for name, shard in weight_map.items()
               if name not in tensors or tensors[name].file.name != shard]
  if misplaced:
    raise CheckpointError(f"{index_path}: {len(misplaced)} tensors are not where the index says, e.g. "
                          + "; ".join(misplaced[:5]))
  return files, tensors


# ----------------------------------------------------------------------------------------------------------
# torch pickles
# ----------------------------------------------------------------------------------------------------------

def open_torch_source(file: str | os.PathLike, *, config_name: str | None = None) -> TensorSource:
  """A PyTorch state dict file; ``config_name`` names a config file looked for beside it."""
  file = Path(file)
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

  def read(info: TensorInfo) -> np.ndarray:
    tensor = state[info.name].detach().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
      return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()

  tensors = {key: TensorInfo(name=key, file=file, dtype_name=dtype_names.get(t.dtype, str(t.dtype)),
                             shape=tuple(t.shape), offset=position, nbytes=t.numel() * t.element_size())
             for position, (key, t) in enumerate(state.items())}
  config_path = file.parent / config_name if config_name else None
  return TensorSource(path=file, files=(file,), tensors=tensors,
                      config_path=config_path if config_path is not None and config_path.is_file() else None,
                      reader=read)


def open_weights_file(path: str | os.PathLike, *, torch_config_name: str | None = None) -> TensorSource:
  """A torch file (by its suffix), else safetensors (a file, a shard index or a directory holding either)."""
  path = Path(path)
  if path.is_file() and path.suffix in TORCH_SUFFIXES:
    return open_torch_source(path, config_name=torch_config_name)
  return open_safetensors_source(path)
