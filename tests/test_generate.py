"""``rehyat_jax.generate`` on tiny random models: the CLI writes readable mp4s, the recurrent mode samples the
same latents as the parallel causal student, and bad inputs fail with clear messages before any work.

Every part goes through its real converter: a random diffusers DiT saved in the original layout (weights
~0.1, large enough that the attention form visibly changes the video), a transformers umT5
saved with ``save_pretrained``, diffusers' tiny test VAE, and a SentencePiece model trained here.
"""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v2 as imageio
import jax
import numpy as np
import pytest
import sentencepiece
import torch
from diffusers import AutoencoderKLWan
from flax import nnx
from transformers import UMT5Config as HFUMT5Config
from transformers import UMT5EncoderModel

from rehyat_jax import generate as gen
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig, PhiParam
from rehyat_jax.convert.umt5 import convert_umt5_checkpoint
from rehyat_jax.convert.wan_dit import convert_wan_checkpoint
from rehyat_jax.convert.wan_vae import convert_wan_vae
from rehyat_jax.models.umt5 import UMT5Config
from rehyat_jax.train.checkpointing import export_phi
from wan_torch_fixtures import build_tiny_diffusers_wan, original_layout_state_dict, wan_config_from_diffusers, \
    write_original_layout

# The DiT's latent channels are the VAE's z_dim (16) and its text width the encoder's d_model.
TINY_T5 = UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16)
TINY_DIT_OVERRIDES = dict(in_channels=16, out_channels=16, text_dim=32)
TEXT_LEN = 16
# A large init_scale makes the linear branch matter, so recurrent vs parallel compares real work.
TINY_STUDENT = RehyatConfig(chunk_frames=2, overlap_frames=1, causal=True, mode="parallel",
                            feature_map=FeatureMapConfig(degree=2, hidden=8, feature_dim=4, init_scale=0.3))
CORPUS = """A cat sits on the mat in the warm afternoon sun.
The quick brown fox jumps over the lazy dog near the river.
Video of a red car driving along a coastal road at sunset.
一只猫在草地上奔跑。
"""
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
  """Converted folders of a tiny DiT, umT5 and VAE, and a trained tokenizer folder."""
  root = tmp_path_factory.mktemp("checkpoints")
  dit = build_tiny_diffusers_wan(seed=0, **TINY_DIT_OVERRIDES)
  write_original_layout(original_layout_state_dict(dit), root / "dit_src" / "model.safetensors",
                        config=wan_config_from_diffusers(dit, text_len=TEXT_LEN))
  convert_wan_checkpoint(root / "dit_src", root / "dit", progress=None)

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


def model_flags(checkpoints: dict[str, Path]) -> list[str]:
  return [f"--{name}={path}" for name, path in checkpoints.items()]


def test_cli_writes_readable_mp4s(checkpoints, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("A cat sits on the mat.\n\nA red car at sunset\n")
  out = tmp_path / "videos"
  rc = gen.main(model_flags(checkpoints) + [
      f"--prompts-file={prompts}", f"--out-dir={out}", "--frames=5", "--size=32*32",
      "--steps=2", "--precision=fp32", "--save-latents"])
  assert rc == 0
  # Batch mode defaults to VBench's 5 seeds per prompt, named {prompt}-{i}.mp4.
  names = [f"{prompt}-{i}" for prompt in ("A cat sits on the mat.", "A red car at sunset") for i in range(5)]
  assert sorted(path.name for path in out.glob("*.mp4")) == sorted(f"{name}.mp4" for name in names)
  for name in names:
    with imageio.get_reader(out / f"{name}.mp4") as reader:
      frames = [frame for frame in reader]
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    latents = np.load(out / f"{name}.npy")
    assert latents.shape == (1, 16, 2, 4, 4) and np.isfinite(latents).all()
  assert not np.allclose(np.load(out / f"{names[0]}.npy"), np.load(out / f"{names[1]}.npy"))  # seeds differ
  printed = capsys.readouterr().out
  assert "s per video" in printed and "peak device memory" in printed


def test_recurrent_mode_matches_parallel_causal_student(checkpoints, tmp_path):
  parts = [checkpoints[name] for name in ("dit", "t5", "tokenizer", "vae")]
  student = gen.load_pipeline(*parts, rehyat=TINY_STUDENT, precision="fp32")
  teacher = gen.load_pipeline(*parts, precision="fp32")
  # 9 frames = 3 latent frames: one full chunk of 2 and a shorter last chunk.
  common = dict(frames=9, height=32, width=32, steps=2, seed=3, show_progress=False)
  parallel = gen.generate(student, "A cat", out_dir=tmp_path / "parallel", attention="rehyat", mode="parallel",
                          **common)[0]
  recurrent = gen.generate(student, "A cat", out_dir=tmp_path / "recurrent", attention="rehyat",
                           mode="recurrent", **common)[0]
  softmax = gen.generate(teacher, "A cat", out_dir=tmp_path / "teacher", **common)[0]
  assert parallel.latents.shape == (1, 16, 3, 4, 4)
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  err, teacher_gap = rel(recurrent.latents, parallel.latents), rel(softmax.latents, parallel.latents)
  print(f"final latents: recurrent vs parallel causal student {err:.2e}; teacher vs student {teacher_gap:.2e}")
  assert err <= TOLERANCE
  # The comparison has power: swapping the attention form moves the latents far beyond the tolerance.
  assert teacher_gap > 100 * TOLERANCE
  assert recurrent.path.is_file()


@pytest.mark.parametrize("flags,message", [
    (["--prompt=a cat", "--frames=6"], "frames=6 is not of the form 4k\\+1"),
    (["--prompt=a cat", "--size=30x32"], "width=30 is not a positive multiple of 16"),
    (["--prompt=   "], "--prompt: prompt 0 is empty"),
    (["--prompt=a cat", "--attention=linear"], "unknown --attention 'linear'"),
    (["--prompt=a cat", "--window-backend=cudnn"], "unknown --window-backend 'cudnn'"),
    (["--prompt=a cat", "--mode=stream"], "unknown mode 'stream'"),
    (["--prompt=a cat", "--mode=recurrent"], "needs attention='rehyat'"),
    (["--prompt=a cat", "--mode=recurrent", "--attention=rehyat", "--non-causal"], "non-causal"),
    (["--prompt=a cat", "--mode=recurrent", "--attention=rehyat", "--converted-blocks=1"],
     "blocks \\[1\\] of 2 keep full softmax"),
])
def test_cli_rejects_bad_inputs(checkpoints, tmp_path, capsys, flags, message):
  assert gen.main(model_flags(checkpoints) + [f"--out-dir={tmp_path / 'out'}"] + flags) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "out").exists()  # nothing was started


def test_cli_rejects_empty_prompts_file(checkpoints, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n  \n")
  assert gen.main(model_flags(checkpoints) + [f"--prompts-file={prompts}"]) == 2
  assert "is empty" in capsys.readouterr().err


def test_exported_phi_is_restored(checkpoints, tmp_path):
  parts = [checkpoints[name] for name in ("dit", "t5", "tokenizer", "vae")]
  trained = gen.load_pipeline(*parts, rehyat=TINY_STUDENT, precision="fp32").dit
  phi = nnx.state(trained, PhiParam)
  nnx.update(trained, jax.tree_util.tree_map(lambda a: a * 2 + 1, phi))  # unlike any fresh initialisation
  export_phi(trained, tmp_path / "phi")
  loaded = gen.load_pipeline(*parts, rehyat=TINY_STUDENT, phi_path=tmp_path / "phi", precision="fp32").dit
  expected, restored = nnx.to_pure_dict(nnx.state(trained, PhiParam)), nnx.to_pure_dict(nnx.state(loaded, PhiParam))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, expected)


def test_library_validation():
  with pytest.raises(gen.GenerationError, match="no prompts"):
    gen.check_prompts([])
  with pytest.raises(gen.GenerationError, match="try 5 or 9"):
    gen.check_video_shape(6, 32, 32)
  gen.check_video_shape(81, 480, 832)
  assert gen.parse_size("832*480") == (832, 480) and gen.parse_size("32x16") == (32, 16)
  assert gen.video_name("a/b cat", 3) == "a_b cat-3.mp4"
