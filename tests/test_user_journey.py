"""The user journey end to end, with only the commands and flags a user types (each a subprocess), every step
reading what the previous one wrote as it is:

  random Wan2.1 checkpoint (original layout) -> tools/convert_wan_weights.py (DiT, umT5, VAE)
  -> tools/encode_prompts.py -> stage 1 on teacher trajectories of those prompts (python -m rehyat_jax.train)
  -> tools/rank_blocks.py -> tools/generate_latents.py -> stage 2 on those latents with the ranked blocks
  -> python -m rehyat_jax.generate with stage 2's exports -> an mp4.

What cannot come from a CLI is made here as its authors publish it: a transformers umT5 (save_pretrained), a
diffusers Wan VAE (save_pretrained) and a SentencePiece tokenizer model. Sizes are tiny (the 'tiny' DiT preset:
4 latent channels, text width 16, 12 text tokens), so the text encoder, VAE and tokenizer are made to fit it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["A cat walks on the grass.", "A red car drives along the coast.", "Waves crash on a rocky shore.",
           "A dog runs on the beach."]
TEXT_LEN = 12          # the tiny DiT's text_len (rehyat_jax.models.config.WAN_TINY)
LATENT_SHAPE = "(3,4,4)"
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"  # 9 frames of 32x32 through the Wan VAE (4x in time, 8x in space)


def make_text_encoder_vae_and_tokenizer(root: Path) -> None:
  """umT5 and VAE checkpoints as their libraries save them, and a SentencePiece model, sized for the tiny DiT."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKLWan  # pylint: disable=g-import-not-at-top
  from transformers import UMT5Config, UMT5EncoderModel  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=4, num_heads=4, d_ff=24, num_layers=2,
                              relative_attention_num_buckets=8, relative_attention_max_distance=16,
                              feed_forward_proj="gated-gelu")).save_pretrained(root / "t5_src")
  AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                   temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                   latents_std=[1.0] * 4).save_pretrained(root / "vae_src")
  tokenizer = root / "tokenizer"
  tokenizer.mkdir()
  (tokenizer / "corpus.txt").write_text("\n".join(PROMPTS * 4) + "\n")
  sentencepiece.SentencePieceTrainer.train(
      input=str(tokenizer / "corpus.txt"), model_prefix=str(tokenizer / "spiece"), vocab_size=32,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)


class Shell:
  """Runs commands from the repository root as a user would, recording the seconds each took."""

  def __init__(self):
    # Cheap XLA compilation (what the attention tests use too): compiling dominates these tiny runs.
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=xla_flags)
    self.seconds: dict[str, float] = {}

  def __call__(self, name: str, *args, timeout: int = 600) -> str:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=self.env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    self.seconds[name] = time.perf_counter() - start
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_user_journey(tmp_path):
  sh = Shell()
  make_text_encoder_vae_and_tokenizer(tmp_path)
  (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
  ckpt, data, runs = tmp_path / "ckpt", tmp_path / "data", tmp_path / "runs"

  sh("random checkpoint", "tools/make_random_wan_checkpoint.py", tmp_path / "wan_src", "--preset", "tiny",
     "--layout", "original")
  sh("convert dit", "tools/convert_wan_weights.py", tmp_path / "wan_src", ckpt / "dit")
  sh("convert umt5", "tools/convert_wan_weights.py", tmp_path / "t5_src", ckpt / "t5", "--component", "umt5")
  sh("convert vae", "tools/convert_wan_weights.py", tmp_path / "vae_src", ckpt / "vae", "--component", "vae")
  text_encoder = ["--t5", ckpt / "t5", "--tokenizer", tmp_path / "tokenizer"]

  out = sh("encode prompts", "tools/encode_prompts.py", "--prompts-file", tmp_path / "prompts.txt", *text_encoder,
           "--out", data / "prompts", "--text-len", TEXT_LEN)
  assert f"{len(PROMPTS)} examples" in out

  # Stage 1 reads the encoder's --out folder as it is.
  stage1 = runs / "stage1"
  sh("stage 1", "-m", "rehyat_jax.train", "--config", "configs/tiny.py", f"--config.workdir={stage1}",
     f"--config.model.checkpoint={ckpt / 'dit'}", "--config.data.source=trajectories",
     f"--config.data.data_dir={data / 'prompts'}", f"--config.data.latent_shape={LATENT_SHAPE}",
     "--config.train.steps=2", "--config.train.global_batch_size=2", "--config.train.log_every=1")
  assert (stage1 / "student_export" / "student.json").is_file()
  logged = json.loads((stage1 / "metrics.jsonl").read_text().splitlines()[-1])
  assert logged["nonfinite_steps"] == 0
  for block in (0, 1):  # the safety signals of every block are in the log
    assert 0.0 <= logged[f"block{block}/guard_rate"] <= 1.0 and logged[f"block{block}/phi_q_rms"] > 0

  ranked = sh("rank blocks", "tools/rank_blocks.py", stage1 / "per_block_error.json", "--count", "1").strip()
  assert ranked in ("[0]", "[1]")

  sh("generate latents", "tools/generate_latents.py", "--prompts-file", tmp_path / "prompts.txt",
     "--dit", ckpt / "dit", *text_encoder, "--out", data / "latents", "--frames", 9, "--size", "32x32",
     "--steps", 2)

  stage2 = runs / "stage2"
  out = sh("stage 2", "-m", "rehyat_jax.train", "--config", "configs/tiny.py:finetune",
           f"--config.workdir={stage2}", f"--config.model.checkpoint={ckpt / 'dit'}",
           f"--config.model.student={stage1 / 'student_export'}", f"--config.rehyat.converted_blocks={ranked}",
           "--config.data.source=latents", f"--config.data.data_dir={data / 'latents'}",
           f"--config.data.latent_shape={LATENT_SHAPE}", "--config.train.steps=2",
           "--config.train.global_batch_size=2")
  assert f"--student {stage2 / 'student_export'}" in out
  exported = json.loads((stage2 / "student_export" / "student.json").read_text())["student"]
  assert exported["converted_blocks"] == [int(ranked.strip("[]"))]  # the ranked block, not a count

  videos = tmp_path / "videos"
  sh("generate", "-m", "rehyat_jax.generate", "--dit", stage2 / "dit", *text_encoder, "--vae", ckpt / "vae",
     "--student", stage2 / "student_export", "--prompt", "A cat walks on the grass", "--frames", 9,
     "--size", "32x32", "--steps", 2, "--out-dir", videos)
  with imageio.get_reader(videos / "A cat walks on the grass-0.mp4") as reader:
    frames = [frame for frame in reader]  # list(reader) would ask len(), which ffmpeg does not know
  assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
  print("seconds per step: " + ", ".join(f"{name} {s:.0f}" for name, s in sh.seconds.items()))


def test_stage1_without_a_prompt_dataset_is_one_line_before_anything_compiles():
  """The 1.3B recipe has no default data_dir: random texts are never distilled silently."""
  done = subprocess.run([sys.executable, "-m", "rehyat_jax.train", "--config", "configs/distill_wan_1_3b.py"], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=300, check=False)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
  assert "data.source='trajectories' needs data.data_dir" in lines[0] and "data.source='synthetic'" in lines[0]
