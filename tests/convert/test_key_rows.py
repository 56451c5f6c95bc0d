"""The converter core on synthetic tables: transforms, templated tables, aliases, validation and streaming."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rehyat_jax.convert import key_rows, storage
from rehyat_jax.convert.key_rows import KeyRow, KeyTemplates
from rehyat_jax.convert.sources import CheckpointError, TensorInfo, TensorSource

# Target leaf shape -> the torch shape each transform expects for it.
TRANSFORM_SHAPES = [
    ("linear", (300, 5), (5, 300)),
    ("conv3d", (1, 2, 3, 4, 5), (5, 4, 1, 2, 3)),
    ("conv2d", (2, 3, 4, 5), (5, 4, 2, 3)),
    ("norm_video", (6,), (6, 1, 1, 1)),
    ("norm_image", (6,), (6, 1, 1)),
    ("copy", (2, 3), (2, 3)),
]


def in_memory_source(tensors: dict[str, np.ndarray], path: str = "mem") -> TensorSource:
  """A TensorSource over numpy arrays (float32 unless they say otherwise)."""
  names = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
  infos = {key: TensorInfo(name=key, file=Path(path), dtype_name=names[value.dtype], shape=value.shape,
                           offset=i, nbytes=value.nbytes) for i, (key, value) in enumerate(tensors.items())}
  return TensorSource(path=Path(path), files=(Path(path),), tensors=infos, config_path=None,
                      reader=lambda info: tensors[info.name])


@pytest.mark.parametrize("transform, target, source", TRANSFORM_SHAPES)
def test_transforms_undo_each_other(transform, target, source):
  row = KeyRow("x", ("x",), transform)
  assert key_rows.source_shape(row, target) == source
  assert key_rows.source_shape(KeyRow("x", ("x",), transform, layer=3), (7,) + target) == source
  tensor = np.random.default_rng(0).standard_normal(source).astype(np.float32)
  assert key_rows.to_target_layout(tensor, transform).shape == target
  destination = np.empty(target, np.float32)
  key_rows.copy_into(destination, tensor, transform)  # linear: more rows than one copy block
  np.testing.assert_array_equal(destination, key_rows.to_target_layout(tensor, transform))
  # Independent of the implementation: torch's axis order spelled out per transform.
  expected = {"linear": lambda t: np.einsum("oi->io", t),                 # [out, in] -> [in, out]
              "conv3d": lambda t: np.einsum("oithw->thwio", t),           # [O, I, T, H, W] -> [T, H, W, I, O]
              "conv2d": lambda t: np.einsum("oihw->hwio", t),
              "norm_video": lambda t: t[:, 0, 0, 0], "norm_image": lambda t: t[:, 0, 0],
              "copy": lambda t: t}[transform](tensor)
  np.testing.assert_array_equal(destination, expected)


TEMPLATES = KeyTemplates(
    top_level={"embed.weight": (("embed", "embedding"), "copy")},
    block={"layers.{i}.proj.weight": (("proj", "kernel"), "linear"),
           "layers.{i}.norm.weight": (("norm", "scale"), "copy")},
    block_prefix="layers.",
    aliases={"tied_embed.weight": "embed.weight"},
)
SHAPES = {"embed": {"embedding": (10, 4)}, "blocks": {"proj": {"kernel": (2, 4, 3)}, "norm": {"scale": (2, 4)}}}


def test_templates_expand_per_layer_and_score_names():
  table = TEMPLATES.rows(2)
  assert list(table) == ["embed.weight", "layers.0.proj.weight", "layers.0.norm.weight", "layers.1.proj.weight",
                         "layers.1.norm.weight"]
  assert table["layers.1.proj.weight"] == KeyRow("layers.1.proj.weight", ("blocks", "proj", "kernel"), "linear", 1)
  assert key_rows.expected_shapes(table, SHAPES)["layers.1.proj.weight"] == (3, 4)
  assert TEMPLATES.split_block_key("layers.12.norm.weight") == (12, "norm.weight")
  assert TEMPLATES.split_block_key("layers.x.norm.weight") is None and TEMPLATES.split_block_key("layers.3") is None
  assert TEMPLATES.num_layers(["layers.0.a", "layers.4.b", "embed.weight"]) == 5
  assert TEMPLATES.score(["tied_embed.weight", "layers.9.norm.weight", "layers.9.other", "other"]) == 2
  with pytest.raises(ValueError, match="must start with"):
    KeyTemplates(top_level={}, block={"blocks.{i}.x": (("x",), "copy"), "x.{i}.y": (("y",), "copy")})


def test_detect_layout_names_both_layouts_on_failure():
  other = KeyTemplates(top_level={"w": (("w",), "copy")}, block={})
  layouts = {"ours": TEMPLATES, "theirs": other}
  assert key_rows.detect_layout({"embed.weight", "layers.0.norm.weight"}, layouts, "ours nor theirs") == "ours"
  with pytest.raises(CheckpointError, match=r"neither ours nor theirs names \(scores .*first keys: unknown"):
    key_rows.detect_layout({"unknown"}, layouts, "ours nor theirs")


def source_tensors(embedding_keys=("embed.weight",)) -> dict[str, np.ndarray]:
  tensors = {key: np.ones((10, 4), np.float32) for key in embedding_keys}
  for i in range(2):
    tensors[f"layers.{i}.proj.weight"] = np.full((3, 4), i, np.float32)
    tensors[f"layers.{i}.norm.weight"] = np.full((4,), 10 + i, np.float32)
  return tensors


@pytest.mark.parametrize("embedding_keys", [("embed.weight",), ("tied_embed.weight",),
                                            ("embed.weight", "tied_embed.weight")])
def test_an_alias_stands_in_for_its_key(embedding_keys):
  source = in_memory_source(source_tensors(embedding_keys))
  table = key_rows.resolve_aliases(TEMPLATES.rows(2), source.tensors, TEMPLATES.aliases)
  embedding = "embed.weight" if "embed.weight" in embedding_keys else "tied_embed.weight"
  assert table[embedding].path == ("embed", "embedding") and len(table) == 5
  key_rows.check_source(source, key_rows.expected_shapes(table, SHAPES), "a test model", TEMPLATES.aliases)


def test_check_source_lists_every_problem_at_once():
  tensors = source_tensors(("embed.weight", "tied_embed.weight"))
  tensors["tied_embed.weight"] = np.ones((10, 5), np.float32)
  del tensors["layers.1.norm.weight"]
  tensors["layers.0.proj.weight"] = np.ones((4, 3), np.float32)
  tensors["layers.0.norm.weight"] = np.ones((4,), np.int32)
  tensors["layers.0.extra"] = np.ones((2,), np.float32)
  source = in_memory_source(tensors, "bad.safetensors")
  table = key_rows.resolve_aliases(TEMPLATES.rows(2), source.tensors, TEMPLATES.aliases)
  with pytest.raises(CheckpointError) as error:
    key_rows.check_source(source, key_rows.expected_shapes(table, SHAPES), "a test model", TEMPLATES.aliases)
  assert str(error.value).splitlines() == [
      "bad.safetensors does not match a test model:",
      "  1 missing key:", "    layers.1.norm.weight  expected [4]",
      "  1 unexpected key:", "    layers.0.extra  [2]",
      "  2 shape mismatches:", "    layers.0.proj.weight: expected [3, 4], found [4, 3]",
      "    tied_embed.weight: expected [10, 4] (tied to embed.weight), found [10, 5]",
      "  1 tensor with an unsupported dtype:", "    layers.0.norm.weight: I32 (expected F32, F16, BF16 or F64)",
  ]


class Config:
  def to_json(self) -> str:
    return json.dumps({"name": "test"})


def test_write_tensors_streams_into_the_tree_and_reads_back(tmp_path):
  source = in_memory_source(source_tensors())
  table = TEMPLATES.rows(2)
  messages = []
  storage.write_tensors(tmp_path / "out", source, table, SHAPES, Config(), {"model": "test"}, dtype="bfloat16",
                        overwrite=False, progress=messages.append, start=0.0)
  assert messages[-1].startswith(f"done: {tmp_path / 'out'}")
  conversion = json.loads((tmp_path / "out" / storage.CONVERSION_FILE).read_text())
  assert conversion["model"] == "test" and {"converted_at", "seconds_to_convert"} <= set(conversion)
  assert storage.read_config(tmp_path / "out", dict, "test", "dit") == {"name": "test"}
  params = storage.restore_params(tmp_path / "out")
  assert params["blocks"]["proj"]["kernel"].dtype == storage.TARGET_DTYPES["bfloat16"]
  np.testing.assert_array_equal(np.asarray(params["blocks"]["proj"]["kernel"][1], np.float32), np.ones((4, 3)))
  np.testing.assert_array_equal(np.asarray(params["blocks"]["norm"]["scale"], np.float32),
                                [[10] * 4, [11] * 4])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  # The memory-mapped buffers are gone once the Orbax copy is written.
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "conversion.json", "params"]


def test_conversion_buffers_are_memory_mapped_files(tmp_path):
  params = storage.allocate_params(SHAPES, "float32", tmp_path / "buffers")
  kernel = params["blocks"]["proj"]["kernel"]
  kernel[...] = 7.0
  kernel.base.flush()
  # What was written into the buffer is in its file, which is the backing store of the array.
  on_disk = np.load(tmp_path / "buffers" / "leaf_00001.npy")
  assert on_disk.shape == (2, 4, 3) and (on_disk == 7.0).all()
  assert len(list((tmp_path / "buffers").iterdir())) == 3


def test_a_conversion_that_fails_midway_leaves_nothing_behind(tmp_path):
  tensors = source_tensors()
  source = in_memory_source(tensors)
  reads = []

  def failing_reader(info):
    reads.append(info.name)
    if len(reads) == 3:
      raise OSError("disk went away")
    return tensors[info.name]

  source = TensorSource(path=source.path, files=source.files, tensors=source.tensors, config_path=None,
                        reader=failing_reader)
  with pytest.raises(OSError, match="disk went away"):
    storage.write_tensors(tmp_path / "out", source, TEMPLATES.rows(2), SHAPES, Config(), {"model": "test"},
                          dtype="float32", overwrite=False, progress=None, start=0.0)
  assert len(reads) == 3 and list(tmp_path.iterdir()) == []


def test_a_conversion_removes_what_a_killed_one_left_behind(tmp_path):
  # A conversion killed outright: its staging directory holds buffers, and its lock file is no longer locked.
  killed = subprocess.run([sys.executable, "-c", HOLD_STAGING_THEN_DIE, str(tmp_path / "out")], check=False)
  assert killed.returncode == -signal.SIGKILL
  [abandoned] = tmp_path.glob(".out.converting-*")
  assert (abandoned / storage.BUFFERS_DIR).is_dir()
  # A conversion that is running (its lock is held), one of another destination, and a directory without a lock.
  with storage.staging_directory(tmp_path / "other") as other_running:
    (other_running / "x").write_text("in progress")
    live_lock = tmp_path / ".out.converting-live0000000"
    live_lock.mkdir()
    fd = os.open(live_lock / storage.STAGING_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    unlocked = tmp_path / ".out.converting-nolock00000"
    unlocked.mkdir()
    storage.write_tensors(tmp_path / "out", in_memory_source(source_tensors()), TEMPLATES.rows(2), SHAPES,
                          Config(), {"model": "test"}, dtype="float32", overwrite=False, progress=None, start=0.0)
    assert not abandoned.exists() and live_lock.exists() and unlocked.exists() and other_running.exists()
    os.close(fd)
  assert (tmp_path / "other" / "x").read_text() == "in progress" and not (tmp_path / "other" / storage.STAGING_LOCK).exists()


HOLD_STAGING_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from rehyat_jax.convert import storage
with storage.staging_directory(sys.argv[1]) as staging:
  (staging / storage.BUFFERS_DIR).mkdir()
  os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_interrupted_overwrite_keeps_the_previous_destination(tmp_path, monkeypatch):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "old").write_text("previous model")
  real_replace, calls = os.replace, []

  def replace_then_interrupt(src, dst):
    calls.append(Path(dst).name)
    if len(calls) == 2:  # SIGTERM between moving the old one aside and moving the new one in
      raise SystemExit(143)
    real_replace(src, dst)

  monkeypatch.setattr(storage.os, "replace", replace_then_interrupt)
  with pytest.raises(SystemExit):
    with storage.staging_directory(tmp_path / "out", overwrite=True) as staging:
      (staging / "new").write_text("new model")
  monkeypatch.setattr(storage.os, "replace", real_replace)
  assert (tmp_path / "out" / "old").read_text() == "previous model"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_reading_a_directory_that_is_not_converted(tmp_path):
  with pytest.raises(CheckpointError, match="not a converted umT5 checkpoint.*--component umt5"):
    storage.read_config(tmp_path, dict, "umT5", "umt5")
  (tmp_path / storage.PARAMS_DIR).mkdir()
  (tmp_path / storage.CONFIG_FILE).write_text("[not json")
  with pytest.raises(CheckpointError, match="config.json: not a umT5 config"):
    storage.read_config(tmp_path, dict, "umT5", "umt5")


def test_too_little_free_disk_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
  real = shutil.disk_usage
  monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: real(path)._replace(free=100))
  reads = []
  source = in_memory_source(source_tensors())
  source = TensorSource(path=source.path, files=source.files, tensors=source.tensors, config_path=None,
                        reader=lambda info: reads.append(info.name))
  # SHAPES in float32: (10*4 + 2*4*3 + 2*4) * 4 bytes = 288 bytes of model, 576 needed.
  with pytest.raises(CheckpointError, match=r"has 0\.0 GB free, but converting there needs about 0\.0 GB: .* twice"):
    storage.write_tensors(tmp_path / "out", source, TEMPLATES.rows(2), SHAPES, Config(), {"model": "test"},
                          dtype="float32", overwrite=False, progress=None, start=0.0)
  assert reads == [] and list(tmp_path.iterdir()) == []


def test_a_full_disk_while_reserving_buffers_is_a_clear_error(tmp_path, monkeypatch):
  def no_space(fd, size):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(storage, "_reserve_blocks", no_space)
  with pytest.raises(CheckpointError, match="no space left on the disk of .*conversion buffers"):
    storage.write_tensors(tmp_path / "out", in_memory_source(source_tensors()), TEMPLATES.rows(2), SHAPES, Config(),
                          {"model": "test"}, dtype="float32", overwrite=False, progress=None, start=0.0)
  assert list(tmp_path.iterdir()) == []


def test_buffers_are_reserved_on_disk_not_sparse(tmp_path):
  params = storage.allocate_params({"w": (256, 1024)}, "float32", tmp_path / "buffers")
  stat = (tmp_path / "buffers" / "leaf_00000.npy").stat()
  assert params["w"].nbytes == 2**20 and stat.st_blocks * 512 >= 2**20  # blocks allocated, not a hole


def test_the_free_disk_check_counts_after_removing_what_killed_conversions_left(tmp_path, monkeypatch):
  killed = subprocess.run([sys.executable, "-c", HOLD_STAGING_THEN_DIE, str(tmp_path / "out")], check=False)
  assert killed.returncode == -signal.SIGKILL
  seen = []
  real_check = storage.check_free_disk
  monkeypatch.setattr(storage, "check_free_disk",
                      lambda *a: (seen.append(sorted(p.name for p in tmp_path.iterdir())), real_check(*a)))
  storage.write_tensors(tmp_path / "out", in_memory_source(source_tensors()), TEMPLATES.rows(2), SHAPES, Config(),
                        {"model": "test"}, dtype="float32", overwrite=False, progress=None, start=0.0)
  assert seen == [[]]  # the leftover buffers were gone when free space was counted
