"""``python -m rehyat_jax.generate`` (``rehyat_jax.inference``) on tiny random models: the CLI writes readable
mp4s, a student export generates from ``--student DIR`` alone, its recurrent forward samples the same latents
as its parallel one, bad inputs fail with clear one-line messages before any work, and ``generate`` encodes
every prompt first and keeps the text encoder's weights in host memory while it samples, with the same latents.

Every part goes through its real converter: a random diffusers DiT saved in the original layout (weights
~0.1, large enough that the attention form visibly changes the video), a transformers umT5
saved with ``save_pretrained``, diffusers' tiny test VAE, and a SentencePiece model trained here. The
student is exported with ``export_student`` as stage 1 writes it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import imageio_ffmpeg
import jax
import numpy as np
import pytest
import sentencepiece
import torch
from diffusers import AutoencoderKLWan
from flax import nnx
from transformers import UMT5Config as HFUMT5Config
from transformers import UMT5EncoderModel

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.student import STUDENT_FILE, export_student, teacher_fingerprint
from rehyat_jax.convert.umt5 import convert_umt5_checkpoint
from rehyat_jax.convert.wan_dit import convert_wan_checkpoint
from rehyat_jax.convert.wan_vae import convert_wan_vae
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.inference import cli, generation, video_io
from rehyat_jax.inference.generation import generate
from rehyat_jax.inference.pipeline import GenerationError, check_prompts, check_video_shape, load_pipeline
from rehyat_jax.inference.sampler import (host_sharding, make_sampler, make_text_encoder,
                                         text_encoder_on_device)
from rehyat_jax.inference.video_io import video_name
from rehyat_jax.models.umt5 import UMT5Config
from rehyat_jax.models.wan import RuntimeConfig
from wan_torch_fixtures import build_tiny_diffusers_wan, original_layout_state_dict, wan_config_from_diffusers, \
    write_original_layout

# The DiT's latent channels are the VAE's z_dim (16) and its text width the encoder's d_model.
TINY_T5 = UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16)
TINY_DIT_OVERRIDES = dict(in_channels=16, out_channels=16, text_dim=32)
TEXT_LEN = 16
# A large init_scale makes the linear branch matter, so recurrent vs parallel compares real work.
TINY_STUDENT = RehyatConfig(chunk_frames=2, overlap_frames=1, causal=True,
                            feature_map=FeatureMapConfig(degree=2, hidden=8, feature_dim=4, init_scale=0.3))
CORPUS = """A cat sits on the mat in the warm afternoon sun.
The quick brown fox jumps over the lazy dog near the river.
Video of a red car driving along a coastal road at sunset.
一只猫在草地上奔跑。
"""
TOLERANCE = 1e-5
FP32 = RuntimeConfig(precision="fp32")


def convert_tiny_dit(root: Path, name: str, seed: int) -> Path:
  dit = build_tiny_diffusers_wan(seed=seed, **TINY_DIT_OVERRIDES)
  write_original_layout(original_layout_state_dict(dit), root / f"{name}_src" / "model.safetensors",
                        config=wan_config_from_diffusers(dit, text_len=TEXT_LEN))
  convert_wan_checkpoint(root / f"{name}_src", root / name, progress=None)
  return root / name


def export_tiny_student(dit_path: Path, directory: Path) -> dict:
  """Exports a TINY_STUDENT of the ``dit_path`` teacher whose phi differ from any fresh initialisation, as
  stage 1 writes it; returns its adapters (pure dict)."""
  trained = load_pretrained(dit_path, run=FP32, rehyat=TINY_STUDENT)
  adapters = nnx.state(trained, AdapterParam)
  nnx.update(trained, jax.tree_util.tree_map(lambda a: a * 1.5 + 0.01, adapters))
  export_student(trained, directory, student=trained.rehyat, teacher_config=trained.cfg,
                 fingerprint=teacher_fingerprint(trained), scan_layers=trained.run.scan_layers)
  return nnx.to_pure_dict(nnx.state(trained, AdapterParam))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
  """Converted folders of a tiny DiT, umT5 and VAE, and a trained tokenizer folder."""
  root = tmp_path_factory.mktemp("checkpoints")
  convert_tiny_dit(root, "dit", seed=0)

  torch.manual_seed(0)
  t5 = UMT5EncoderModel(HFUMT5Config(
      vocab_size=TINY_T5.vocab_size, d_model=TINY_T5.d_model, d_kv=TINY_T5.d_kv, num_heads=TINY_T5.num_heads,
      d_ff=TINY_T5.d_ff, num_layers=TINY_T5.num_layers,
      relative_attention_num_buckets=TINY_T5.relative_attention_num_buckets,
      relative_attention_max_distance=TINY_T5.relative_attention_max_distance, feed_forward_proj="gated-gelu"))
  t5.save_pretrained(root / "t5_src")
  convert_umt5_checkpoint(root / "t5_src", root / "t5", dtype="float32", progress=None)

  vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                         temperal_downsample=[False, True, True]).eval()
  vae.save_pretrained(root / "vae_src")
  convert_wan_vae(root / "vae_src", root / "vae", progress=None)

  tokenizer = root / "tokenizer"
  tokenizer.mkdir()
  (tokenizer / "corpus.txt").write_text(CORPUS * 3)
  sentencepiece.SentencePieceTrainer.train(
      input=str(tokenizer / "corpus.txt"), model_prefix=str(tokenizer / "spiece"), vocab_size=48,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  return {"dit": root / "dit", "t5": root / "t5", "vae": root / "vae", "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def student(checkpoints, tmp_path_factory) -> tuple[Path, dict]:
  """(export folder of a student of the ``checkpoints`` teacher, its adapters)."""
  directory = tmp_path_factory.mktemp("student") / "export"
  return directory, export_tiny_student(checkpoints["dit"], directory)


def model_flags(checkpoints: dict[str, Path]) -> list[str]:
  return [f"--{name}={path}" for name, path in checkpoints.items()]


def student_variant(export: Path, directory: Path, **changes) -> Path:
  """A folder holding only ``export``'s student.json with ``changes`` to its student config: enough for the
  checks that read the JSON before anything is loaded."""
  record = json.loads((export / STUDENT_FILE).read_text())
  record["student"].update(changes)
  directory.mkdir(parents=True)
  (directory / STUDENT_FILE).write_text(json.dumps(record))
  return directory


def read_mp4(path: Path, height: int, width: int) -> np.ndarray:
  """Decoded RGB frames [n, H, W, 3] of an mp4, by the ffmpeg that imageio-ffmpeg ships (started without a
  preexec_fn, unlike imageio's reader, so the test itself does not fork the JAX process)."""
  raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-"], capture_output=True, check=True, timeout=60).stdout
  return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def one_line_error(err: str) -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def test_cli_writes_readable_mp4s(checkpoints, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("A cat sits on the mat.\n\nA red car at sunset\n")
  out = tmp_path / "videos"
  rc = cli.main(model_flags(checkpoints) + [
      f"--prompts-file={prompts}", f"--out-dir={out}", "--frames=5", "--size=32*32",
      "--steps=2", "--precision=fp32", "--save-latents"])
  assert rc == 0
  # Batch mode defaults to VBench's 5 seeds per prompt, named {prompt}-{i}.mp4.
  names = [f"{prompt}-{i}" for prompt in ("A cat sits on the mat.", "A red car at sunset") for i in range(5)]
  assert sorted(path.name for path in out.glob("*.mp4")) == sorted(f"{name}.mp4" for name in names)
  for name in names:
    frames = read_mp4(out / f"{name}.mp4", 32, 32)
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    latents = np.load(out / f"{name}.npy")
    assert latents.shape == (1, 16, 2, 4, 4) and np.isfinite(latents).all()
  assert not np.allclose(np.load(out / f"{names[0]}.npy"), np.load(out / f"{names[1]}.npy"))  # seeds differ
  printed = capsys.readouterr().out
  assert "s per video" in printed and "peak device memory" in printed


def test_recurrent_forward_matches_parallel_causal_student(checkpoints, student, tmp_path):
  export, _ = student
  # 9 frames = 3 latent frames: one full chunk of 2 and a shorter last chunk. The student's settings come
  # from its export alone.
  common = model_flags(checkpoints) + ["--prompt=A cat", "--frames=9", "--size=32x32", "--steps=2", "--seed=3",
                                       "--precision=fp32", "--save-latents"]
  runs = {"parallel": [f"--student={export}", "--forward=parallel"],
          "recurrent": [f"--student={export}", "--forward=recurrent"], "teacher": []}
  latents = {}
  for name, flags in runs.items():
    assert cli.main(common + flags + [f"--out-dir={tmp_path / name}"]) == 0
    assert (tmp_path / name / "A cat-0.mp4").is_file()
    latents[name] = np.load(tmp_path / name / "A cat-0.npy")
  parallel, recurrent, softmax = latents["parallel"], latents["recurrent"], latents["teacher"]
  assert parallel.shape == (1, 16, 3, 4, 4)
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  err, teacher_gap = rel(recurrent, parallel), rel(softmax, parallel)
  print(f"final latents: recurrent vs parallel causal student {err:.2e}; teacher vs student {teacher_gap:.2e}")
  assert err <= TOLERANCE
  # The comparison has power: swapping the attention form moves the latents far beyond the tolerance.
  assert teacher_gap > 100 * TOLERANCE


@pytest.mark.parametrize("flags,message", [
    (["--prompt=a cat", "--frames=6"], "frames=6 is not of the form 4k\\+1"),
    (["--prompt=a cat", "--size=30x32"], "width=30 is not a positive multiple of 16"),
    (["--prompt=   "], "--prompt: prompt 0 is empty"),
    (["--prompt=a cat", "--hybrid-form=scan"], "--hybrid-form.*unknown hybrid_form 'scan'"),
    (["--prompt=a cat", "--window-backend=cudnn"], "--window-backend.*unknown window_backend 'cudnn'"),
    (["--prompt=a cat", "--forward=stream"], "unknown forward 'stream'"),
    (["--prompt=a cat", "--forward=recurrent"], "needs a causal ReHyAt student"),
    (["--prompt=a cat", "--forward=recurrent", "--student={noncausal}"], "non-causal"),
    (["--prompt=a cat", "--forward=recurrent", "--student={partial}"], "blocks \\[1\\] of 2 keep full softmax"),
    (["--prompt=a cat", "--student={missing}"], "--student .*: no such file or directory"),
])
def test_cli_rejects_bad_inputs(checkpoints, student, tmp_path, capsys, flags, message):
  export, _ = student
  variants = {"noncausal": student_variant(export, tmp_path / "noncausal", causal=False),
              "partial": student_variant(export, tmp_path / "partial", converted_blocks=1),
              "missing": tmp_path / "missing"}
  flags = [flag.format(**variants) for flag in flags]
  assert cli.main(model_flags(checkpoints) + [f"--out-dir={tmp_path / 'out'}"] + flags) == 2
  assert re.search(message, one_line_error(capsys.readouterr().err))
  assert not (tmp_path / "out").exists()  # nothing was started


def test_cli_rejects_empty_prompts_file(checkpoints, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n  \n")
  assert cli.main(model_flags(checkpoints) + [f"--prompts-file={prompts}"]) == 2
  assert "is empty" in capsys.readouterr().err


def test_student_folder_without_student_json(checkpoints, tmp_path, capsys):
  (tmp_path / "not_an_export").mkdir()
  assert cli.main(model_flags(checkpoints) + ["--prompt=a cat", f"--student={tmp_path / 'not_an_export'}",
                                              f"--out-dir={tmp_path / 'out'}"]) == 2
  assert "student.json is missing" in one_line_error(capsys.readouterr().err)
  assert not (tmp_path / "out").exists()


def test_student_of_another_teacher_is_refused(checkpoints, tmp_path, capsys):
  # Same architecture, other random weights: only the teacher fingerprint tells them apart.
  other_export = tmp_path / "other_student"
  export_tiny_student(convert_tiny_dit(tmp_path, "other_dit", seed=1), other_export)
  assert cli.main(model_flags(checkpoints) + ["--prompt=a cat", f"--student={other_export}", "--precision=fp32",
                                              f"--out-dir={tmp_path / 'out'}"]) == 2
  error = one_line_error(capsys.readouterr().err)
  assert "other teacher weights" in error and str(other_export) in error
  assert not (tmp_path / "out").exists()


def test_removed_student_flags_are_refused(checkpoints, capsys):
  # The student describes itself: the old flags that re-typed its settings are gone.
  for flag in ("--attention=rehyat", "--phi=PHI_DIR", "--chunk-frames=3", "--mode=recurrent"):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(model_flags(checkpoints) + ["--prompt=a cat", flag])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_exits_zero():
  done = subprocess.run([sys.executable, "-m", "rehyat_jax.generate", "--help"], capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  text = done.stdout
  assert "--student EXPORT_DIR" in text and "--forward" in text and "--phi" not in text
  assert "``" not in text  # plain text, no reST markup
  # The command that writes the --dit / --t5 / --vae folders.
  assert "tools/convert_wan_weights.py" in text and "--component umt5" in text and "--component vae" in text
  for flag, default in (("--frames", "81"), ("--steps", "50"), ("--guidance", "5.0"), ("--shift", "5.0"),
                        ("--seed", "0"), ("--precision", "bf16"), ("--out-dir", "videos"), ("--size", "832x480"),
                        ("--solver", "unipc"), ("--forward", "parallel"), ("--window-backend", "auto")):
    assert re.search(rf"{flag} .*?\(default:\s+{re.escape(default)}\b", text, re.S), flag


def test_every_option_has_help_text():
  for action in cli.build_parser()._actions:  # pylint: disable=protected-access
    assert action.help and action.help.strip(), action.option_strings


def test_writing_a_video_does_not_fork_the_jax_process(tmp_path):
  """JAX warns when a multithreaded process forks (os.fork, or subprocess with a preexec_fn, as imageio-ffmpeg
  starts ffmpeg); the mp4 writer starts ffmpeg without a fork handler running."""

  class TwoGroupsVae:  # decode_stream's contract: groups of frames [1, 3, n, H, W] in [-1, 1]
    def decode_stream(self, latents):
      del latents
      for n in (1, 4):
        yield np.linspace(-1.0, 1.0, 3 * n * 32 * 48, dtype=np.float32).reshape(1, 3, n, 32, 48)

  jax.devices()  # JAX's backend (and its fork warning) is up, as it is during generation
  with pytest.warns(RuntimeWarning, match=r"os\.fork\(\) was called"):  # the control: a fork is seen here
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    written = video_io.write_video(TwoGroupsVae(), None, tmp_path / "clip.mp4")
  assert [str(w.message) for w in caught] == []
  frames = read_mp4(tmp_path / "clip.mp4", 32, 48)
  expected = np.concatenate([video_io.to_uint8_frames(group) for group in TwoGroupsVae().decode_stream(None)])
  assert written == len(frames) == 5 and frames.shape == expected.shape
  # H.264 at near-lossless quality, 4:2:0 chroma: the smooth test pattern survives within a few levels.
  assert np.abs(frames.astype(np.float32) - expected).mean() < 3


def test_ffmpeg_failure_is_a_generation_error(tmp_path):
  frame = np.zeros((32, 48, 3), np.uint8)
  with pytest.raises(GenerationError, match="ffmpeg could not write"):
    with video_io.Mp4Writer(tmp_path / "no_such_dir" / "clip.mp4") as writer:
      writer.append(frame)


def test_exported_student_is_restored(checkpoints, student):
  export, expected = student
  parts = [checkpoints[name] for name in ("dit", "t5", "tokenizer", "vae")]
  loaded = load_pipeline(*parts, student=export, run=FP32).dit
  assert loaded.rehyat == TINY_STUDENT
  restored = nnx.to_pure_dict(nnx.state(loaded, AdapterParam))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, expected)


def test_generate_reads_the_student_from_the_dit(checkpoints, tmp_path):
  parts = [checkpoints[name] for name in ("dit", "t5", "tokenizer", "vae")]
  teacher = load_pipeline(*parts, run=FP32)
  with pytest.raises(GenerationError, match="needs a causal ReHyAt student"):
    generate(teacher, "A cat", out_dir=tmp_path / "out", frames=5, height=32, width=32, steps=2,
             forward="recurrent", show_progress=False)
  assert not (tmp_path / "out").exists()


def tiny_pipeline(checkpoints):
  return load_pipeline(*[checkpoints[name] for name in ("dit", "t5", "tokenizer", "vae")], run=FP32)


def encoder_arrays(pipeline) -> list[jax.Array]:
  return jax.tree_util.tree_leaves(nnx.state(pipeline.text_encoder))


def memory_kinds(pipeline) -> set[str]:
  return {array.sharding.memory_kind for array in encoder_arrays(pipeline)}


def test_text_encoder_waits_in_host_memory_between_encodings(checkpoints):
  # The CPU backend has a pinned_host memory apart from its 'device' one, so every move here is real.
  assert host_sharding().memory_kind == "pinned_host"
  pipeline = tiny_pipeline(checkpoints)
  texts = ["A cat", "一只猫在草地上奔跑。"]
  direct = np.asarray(make_text_encoder(pipeline)(texts))  # where the loader put the weights
  weights = [np.asarray(a) for a in encoder_arrays(pipeline)]
  for _ in range(2):  # the first exit copies the weights to the host, the second reuses that copy
    with text_encoder_on_device(pipeline) as encode:
      assert memory_kinds(pipeline) == {"device"}
      on_device = encoder_arrays(pipeline)
      embedded = np.asarray(encode(texts))
    np.testing.assert_array_equal(embedded, direct)
    assert all(a.sharding == host_sharding() for a in encoder_arrays(pipeline))
    assert all(a.is_deleted() for a in on_device)  # freed, not left to whoever still holds them
    with pytest.raises(RuntimeError, match="back in host memory"):
      encode(texts)
  for kept, original in zip(encoder_arrays(pipeline), weights, strict=True):
    np.testing.assert_array_equal(np.asarray(kept), original)


def test_host_memory_falls_back_to_the_cpu_device():
  class NoPinnedMemory:  # a backend whose device offers only its own memory
    def addressable_memories(self):
      return [type("Memory", (), {"kind": "device"})()]

  assert host_sharding(NoPinnedMemory()).device_set == {jax.devices("cpu")[0]}


def test_generate_encodes_first_and_offload_keeps_the_latents(checkpoints, tmp_path, monkeypatch):
  prompts = ["A cat", "A red car"]
  kwargs = dict(frames=5, height=32, width=32, steps=2, seeds_per_prompt=2, show_progress=False)
  # The reference: the encoder left on the device all along, as before the offload.
  monkeypatch.setattr(generation, "text_encoder_on_device",
                      lambda pipeline: contextlib.nullcontext(make_text_encoder(pipeline)))
  reference = [r.latents for r in generate(tiny_pipeline(checkpoints), prompts, out_dir=tmp_path / "ref",
                                           **kwargs)]
  monkeypatch.undo()

  pipeline, events = tiny_pipeline(checkpoints), []

  @contextlib.contextmanager
  def logged_text_encoder_on_device(pipeline):
    with text_encoder_on_device(pipeline) as encode:
      yield lambda texts: (events.append(("encode", memory_kinds(pipeline))), encode(texts))[1]

  def logged_make_sampler(*args, **kwargs):
    sampler = make_sampler(*args, **kwargs)
    return lambda *inputs: (events.append(("sample", memory_kinds(pipeline))), sampler(*inputs))[1]

  monkeypatch.setattr(generation, "text_encoder_on_device", logged_text_encoder_on_device)
  monkeypatch.setattr(generation, "make_sampler", logged_make_sampler)
  for run in range(2):  # the second call brings the parked weights back
    events.clear()
    latents = [r.latents for r in generate(pipeline, prompts, out_dir=tmp_path / f"run{run}", **kwargs)]
    # The negative prompt and each distinct prompt once, on the device, all before the first video; the
    # weights are in host memory from then on.
    assert events == [("encode", {"device"})] * 3 + [("sample", {"pinned_host"})] * 4
    assert memory_kinds(pipeline) == {"pinned_host"}
    assert len(latents) == len(reference) == 4
    for offloaded, kept in zip(latents, reference):
      np.testing.assert_array_equal(offloaded, kept)


def test_library_validation():
  with pytest.raises(GenerationError, match="no prompts"):
    check_prompts([])
  with pytest.raises(GenerationError, match="try 5 or 9"):
    check_video_shape(6, 32, 32)
  check_video_shape(81, 480, 832)
  assert cli.parse_size("832*480") == (832, 480) and cli.parse_size("32x16") == (32, 16)
  assert video_name("a/b cat", 3) == "a_b cat-3.mp4"


def test_stage1_export_generates_with_no_student_flags(checkpoints, tmp_path):
  """The user journey in two commands: stage 1 on the converted teacher writes <workdir>/student_export,
  and generation reads it with ``--student`` alone (nothing about phi, chunking or blocks re-typed)."""
  from configs import tiny
  from rehyat_jax.train.loop import run
  cfg = tiny.get_config("distill")
  cfg.model.checkpoint = str(checkpoints["dit"])
  cfg.data.latent_shape = (3, 4, 4)
  cfg.train.steps, cfg.train.global_batch_size, cfg.train.log_every = 2, 2, 1
  cfg.workdir = str(tmp_path / "stage1")
  export = Path(run(cfg)["student_export"])
  assert (export / STUDENT_FILE).is_file()
  out = tmp_path / "videos"
  flags = model_flags(checkpoints) + [f"--student={export}", "--forward=recurrent", "--prompt=A cat", "--frames=9",
                                      "--size=32x32", "--steps=2", "--precision=fp32", f"--out-dir={out}"]
  assert cli.main(flags) == 0
  assert len(read_mp4(out / "A cat-0.mp4", 32, 32)) == 9
