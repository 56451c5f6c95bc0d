"""The dataset tools: prompts and videos -> datasets, with a tiny random umT5, a tiny random VAE and a
SentencePiece model trained here. Sizes stay tiny: every shape costs one XLA compilation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import sentencepiece
from flax import nnx

from rehyat_jax.convert.wan_dit import write_converted
from rehyat_jax.data.builders import NEGATIVE_SPLIT, bf16_bits_to_float32
from rehyat_jax.data.latent_generation import generate_latents
from rehyat_jax.data.prompt_encoding import encode_prompts, read_prompts
from rehyat_jax.data.sources import open_latent_source, open_prompt_source
from rehyat_jax.data.video_encoding import (CaptionedVideo, ClipSpec, encode_videos, read_clip, read_video_list,
                                            resize_and_crop)
from rehyat_jax.inference.sampler import make_sampler, make_schedule
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5_TINY, UMT5Encoder, encode_for_wan
from rehyat_jax.models.wan import WanDiT
from rehyat_jax.models.wan_vae import WanVAE, WanVAEConfig
from rehyat_jax.sampling.guidance import WAN_NEGATIVE_PROMPT

TOOLS = Path(__file__).resolve().parents[2] / "tools"
TEXT_LEN = 16
PROMPTS = ["A cat sits on the mat.", "A red car drives along the coast.", "Fireworks over the city at night.",
           "A dog runs on the grass.", "Waves crash on a rocky shore."]
CORPUS = "\n".join(PROMPTS * 4) + "\nThe quick brown fox jumps over the lazy dog.\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> UMT5Tokenizer:
  directory = tmp_path_factory.mktemp("spiece")
  (directory / "corpus.txt").write_text(CORPUS)
  sentencepiece.SentencePieceTrainer.train(
      input=str(directory / "corpus.txt"), model_prefix=str(directory / "spiece"), vocab_size=48,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  return UMT5Tokenizer(directory, text_len=TEXT_LEN, fix_text=None)


@pytest.fixture(scope="module")
def spiece_file(tokenizer) -> Path:
  return tokenizer.model_file


@pytest.fixture(scope="module")
def encoder() -> UMT5Encoder:
  return UMT5Encoder(UMT5_TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def vae() -> WanVAE:
  # Random weights filled into an abstract model: initialising the VAE eagerly takes ~15 s on a busy CPU.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(WanVAEConfig.tiny(), rngs=nnx.Rngs(1))))
  rng = np.random.default_rng(1)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)


def expected_embeddings(texts, tokenizer, encoder) -> tuple[np.ndarray, np.ndarray]:
  """The encoder called directly, rounded to bfloat16 as the dataset stores it; and the token counts."""
  ids, mask = tokenizer(texts)
  hidden = encode_for_wan(encoder(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask), TEXT_LEN)
  return np.asarray(hidden).astype(ml_dtypes.bfloat16).astype(np.float32), mask.sum(axis=1)


def assert_embedding_close(stored_bits, expected):
  # jit and eager may differ in the last float32 bits, which can move a bfloat16 rounding by one step.
  np.testing.assert_allclose(bf16_bits_to_float32(stored_bits), expected, rtol=2 ** -7, atol=1e-6)


def dataset_files(directory: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_prompts_written_resumably_by_two_hosts(tmp_path, tokenizer, encoder):
  kwargs = dict(examples_per_shard=2, batch_size=2)  # 5 prompts -> 3 shards: host 0 writes 0 and 2
  first = encode_prompts(PROMPTS, tokenizer, encoder, tmp_path, host_index=0, num_hosts=2, **kwargs)
  assert (first.shards_total, first.shards_written, first.shards_skipped, first.dataset_dir) == (3, 2, 0, None)
  second = encode_prompts(PROMPTS, tokenizer, encoder, tmp_path, host_index=1, num_hosts=2, **kwargs)
  assert (second.shards_written, second.shards_skipped) == (1, 0)
  assert second.dataset_dir is not None
  before = dataset_files(second.dataset_dir)
  again = encode_prompts(PROMPTS, tokenizer, encoder, tmp_path, host_index=0, num_hosts=2, **kwargs)
  assert (again.shards_written, again.shards_skipped, again.dataset_dir) == (0, 2, second.dataset_dir)
  assert dataset_files(second.dataset_dir) == before

  source = open_prompt_source(second.dataset_dir)
  assert len(source) == len(PROMPTS)
  # the host that finalised also wrote the negative prompt of guidance (Wan's by default), once
  negative = open_prompt_source(second.dataset_dir, NEGATIVE_SPLIT)
  assert len(negative) == 1 and negative[0]["prompt"].decode() == WAN_NEGATIVE_PROMPT
  expected, lengths = expected_embeddings(PROMPTS, tokenizer, encoder)
  for index, prompt in enumerate(PROMPTS):
    record = source[index]
    assert record["prompt"].decode() == prompt
    assert record["text_length"] == lengths[index]
    assert_embedding_close(record["text_embedding"], expected[index])


def write_video(path: Path, seed: int, frames: int = 9, size: int = 32) -> None:
  rng = np.random.default_rng(seed)
  # Smooth content so that the lossy codec keeps it close; the test compares with the decoded frames anyway.
  base = rng.integers(0, 256, (1, 4, 4, 3)).astype(np.float32)
  video = np.repeat(np.repeat(base, size // 4, axis=1), size // 4, axis=2)
  video = np.clip(video + np.arange(frames)[:, None, None, None] * 8.0, 0, 255).astype(np.uint8)
  iio.imwrite(path, video, plugin="FFMPEG", fps=8, codec="libx264")


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg runs ffmpeg as a subprocess
def test_videos_encoded_like_vae_encode(tmp_path, tokenizer, encoder, vae):
  for seed, name in enumerate(["a.mp4", "b.mp4"]):
    write_video(tmp_path / name, seed)
  (tmp_path / "list.jsonl").write_text('{"path": "a.mp4", "caption": "A cat sits on the mat."}\n'
                                       '{"path": "b.mp4", "caption": "A dog runs on the grass."}\n')
  videos = read_video_list(tmp_path / "list.jsonl")
  spec = ClipSpec(width=32, height=32, num_frames=9)
  summary = encode_videos(videos, vae, tokenizer, encoder, tmp_path / "out", spec, examples_per_shard=1,
                          batch_size=1)
  assert (summary.shards_total, summary.shards_written) == (2, 1 + 1)
  source = open_latent_source(summary.dataset_dir)
  assert len(source) == 2
  expected_text, lengths = expected_embeddings([v.caption for v in videos], tokenizer, encoder)
  for index, video in enumerate(videos):
    frames = iio.imread(video.path, plugin="FFMPEG")[:9]
    clip = (frames.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(read_clip(video.path, spec), clip, atol=1e-6)
    record = source[index]
    assert record["key"].decode() == str(video.path)
    assert record["caption"].decode() == video.caption
    assert record["latents"].shape == (16, 3, 4, 4)
    np.testing.assert_allclose(record["latents"], np.asarray(vae.encode(jnp.asarray(clip[None])))[0],
                               rtol=1e-4, atol=1e-4)
    assert record["text_length"] == lengths[index]
    assert_embedding_close(record["text_embedding"], expected_text[index])


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_clear_errors(tmp_path, tokenizer, encoder, vae):
  (tmp_path / "blank.txt").write_text("\n  \n")
  with pytest.raises(ValueError, match="no prompts"):
    read_prompts(tmp_path / "blank.txt")
  with pytest.raises(ValueError, match="empty"):
    encode_prompts([], tokenizer, encoder, tmp_path / "out")
  spec = ClipSpec(width=32, height=32, num_frames=9)
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    encode_videos([CaptionedVideo(tmp_path / "missing.mp4", "x")], vae, tokenizer, encoder, tmp_path / "out",
                  spec)
  write_video(tmp_path / "short.mp4", seed=0, frames=5)
  with pytest.raises(ValueError, match="4k \\+ 1"):
    encode_videos([CaptionedVideo(tmp_path / "short.mp4", "x")], vae, tokenizer, encoder, tmp_path / "out",
                  ClipSpec(width=32, height=32, num_frames=8))
  with pytest.raises(ValueError, match="too short"):
    read_clip(tmp_path / "short.mp4", spec)


def test_resize_covers_then_centre_crops():
  frame = np.zeros((20, 40, 3), np.uint8)
  frame[:, 10:30] = 255  # a white middle half: the centre crop of a 16x16 target sees only white
  out = resize_and_crop(frame, 16, 16)
  assert out.shape == (16, 16, 3)
  assert out.min() > 200
  assert resize_and_crop(frame, 40, 20) is frame


def load_tool(name: str):
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_encode_prompts_cli(tmp_path, tokenizer, encoder, spiece_file, capsys):
  params = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.state(encoder, nnx.Param)))
  write_converted(tmp_path / "t5", params, encoder.cfg, {"model": "test"})
  (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n\n")
  tool = load_tool("encode_prompts")
  common = ["--prompts-file", tmp_path / "prompts.txt", "--t5", tmp_path / "t5", "--tokenizer", spiece_file,
            "--out", tmp_path / "out", "--examples-per-shard", "2", "--batch-size", "2", "--precision", "fp32"]
  # The CLI's tokenizer pads to Wan's 512 tokens; the records keep the encoder's own outputs.
  assert tool.main([str(a) for a in common]) == 0
  assert "3 examples in 2 shards: 2 written" in capsys.readouterr().out
  dataset_dir = next((tmp_path / "out").rglob("dataset_info.json")).parent
  source = open_prompt_source(dataset_dir)
  assert [source[i]["prompt"].decode() for i in range(len(source))] == PROMPTS[:3]
  assert source[0]["text_embedding"].shape == (512, encoder.cfg.d_model)

  (tmp_path / "empty.txt").write_text("\n")
  assert tool.main([str(a) for a in common[2:]] + ["--prompts-file", str(tmp_path / "empty.txt")]) == 1
  assert "no prompts" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_encode_videos_cli_errors(tmp_path, capsys):
  tool = load_tool("encode_videos")
  common = ["--vae", "v", "--t5", "t", "--tokenizer", "s", "--out", str(tmp_path / "out")]
  assert tool.main(["--videos-dir", str(tmp_path), "--frames", "8"] + common) == 1
  assert "no videos" in capsys.readouterr().err
  write_video(tmp_path / "a.mp4", seed=0)
  assert tool.main(["--videos-dir", str(tmp_path), "--frames", "8"] + common) == 1
  assert "4k + 1" in capsys.readouterr().err
  (tmp_path / "list.csv").write_text("path,caption\nnope.mp4,hello\n")
  assert tool.main(["--video-list", str(tmp_path / "list.csv"), "--frames", "9", "--size", "32x32"] + common) == 1
  assert "nope.mp4" in capsys.readouterr().err


def test_teacher_latents_match_the_sampler(tmp_path, tokenizer, encoder):
  dit = WanDiT(WanConfig(dim=24, ffn_dim=32, num_heads=2, num_layers=1, in_dim=16, out_dim=16,
                         text_dim=UMT5_TINY.d_model, text_len=TEXT_LEN), rngs=nnx.Rngs(2))
  # Wan initialises the head (and other outputs) to zero, which would make the samples equal the noise.
  params = nnx.state(dit, nnx.Param)
  rng = np.random.default_rng(3)
  nnx.update(dit, jax.tree_util.tree_map(
      lambda p: p if np.any(p) else jnp.asarray(rng.normal(0, 0.1, p.shape), p.dtype), params))
  kwargs = dict(frames=5, height=16, width=16, steps=2, solver="euler", guidance=5.0, seed=7,
                negative_prompt="blurry", examples_per_shard=2, batch_size=2, num_hosts=2)
  prompts = PROMPTS[:3]
  assert generate_latents(prompts, dit, tokenizer, encoder, tmp_path, host_index=0, **kwargs).shards_written == 1
  summary = generate_latents(prompts, dit, tokenizer, encoder, tmp_path, host_index=1, **kwargs)
  source = open_latent_source(summary.dataset_dir)
  assert len(source) == 3

  sampler = make_sampler(dit, make_schedule("euler", 2, 5.0), solver="euler", guidance=5.0, forward="parallel")
  # The teacher conditions on the stored embeddings (bfloat16): read them back from the dataset.
  texts = [bf16_bits_to_float32(source[2]["text_embedding"])[None],
           expected_embeddings(["blurry"], tokenizer, encoder)[0]]
  record = source[2]  # written by host 0, in the second shard: its noise seed is 7 + 2 all the same
  assert record["key"].decode() == "p00000002-s7" and record["caption"].decode() == prompts[2]
  noise = jax.random.normal(jax.random.key(9), (1, 16, 2, 2, 2), jnp.float32)
  expected = sampler(noise, jnp.asarray(texts[0]), jnp.asarray(texts[1]))
  np.testing.assert_allclose(record["latents"], np.asarray(expected)[0], rtol=1e-5, atol=1e-5)
  assert np.abs(record["latents"] - np.asarray(noise)[0]).max() > 1e-3  # the DiT did change the noise


def test_generate_latents_cli_checks_before_loading(tmp_path, capsys):
  (tmp_path / "prompts.txt").write_text("A cat.\n")
  tool = load_tool("generate_latents")
  args = ["--prompts-file", str(tmp_path / "prompts.txt"), "--dit", "missing", "--t5", "t", "--tokenizer", "s",
          "--out", str(tmp_path / "out")]
  assert tool.main(args + ["--frames", "8"]) == 1
  assert "4k+1" in capsys.readouterr().err
  assert tool.main(args + ["--frames", "5", "--size", "32x32"]) == 1
  assert "missing" in capsys.readouterr().err
