"""Time text-to-video generation at real Wan2.1 shapes with random weights (no downloads possible).

Builds the four parts in memory with random parameters (Wan2.1-1.3B DiT, umT5-XXL, Wan-VAE, a
SentencePiece tokenizer trained here on a few sentences) and runs ``rehyat_jax.inference.generate``
for: the softmax teacher, a fully recurrent causal ReHyAt student (all 30 blocks, Tc=3, To=1)
at the same size, and the recurrent student on a long video. Prints seconds per video, seconds
per denoising step (the last of ``--videos`` videos per case: with the default 2, the second, after
compilation; with 1, the only one, compilation included) and peak device memory.

All cases run in one process, so the peak-memory column is the peak so far. For each case's own peak,
run one case per process (umT5-XXL and the VAE are then built in each):

  python bench/bench_generate.py --steps 10 --cases teacher:81,recurrent:81,recurrent:321
  for c in teacher:81 recurrent:81; do python bench/bench_generate.py --steps 50 --cases $c; done
  python bench/bench_generate.py --steps 50 --videos 1 --cases recurrent:321
  python bench/bench_generate.py --tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def build_tokenizer(directory: Path) -> Path:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  text = directory / "corpus.txt"
  text.write_text("\n".join(["a cat walks on the grass", "a red car drives along the coast at sunset",
                             "two dogs play in the snow", "waves crash on a rocky shore"] * 20))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(directory / "spiece"), vocab_size=32,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  return directory / "spiece.model"


def use_opencv_writer_if_needed() -> str:
  """The GPU machine here lacks imageio-ffmpeg (its 68 MB wheel cannot travel); OpenCV is there.
  Swap in an OpenCV mp4v writer that consumes the same streaming decode, so the timing still
  includes decoding and writing every frame."""
  try:
    import imageio_ffmpeg  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    return "imageio-ffmpeg (libx264)"
  except ImportError:
    pass
  import cv2  # pylint: disable=g-import-not-at-top
  from rehyat_jax.inference import video_io  # pylint: disable=g-import-not-at-top

  def write_video(vae, latents, path, fps=video_io.FPS):
    writer, written = None, 0
    for group in vae.decode_stream(latents):
      for frame in video_io.to_uint8_frames(group):
        if writer is None:
          writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
        writer.write(frame[..., ::-1])
        written += 1
    writer.release()
    return written

  # generate() calls both through the video_io module, so replacing them there is enough.
  video_io.write_video = write_video
  video_io.check_video_writer = lambda: None
  return "OpenCV (mp4v)"


def build_shared(args):
  """(dit config, text encoder, tokenizer dir, VAE): the parts every case shares."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from rehyat_jax.models import config as dit_configs  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.config import PrecisionPolicy  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.umt5 import UMT5_TINY, UMT5_XXL, UMT5Encoder  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.wan_vae import WanVAE, WanVAEConfig  # pylint: disable=g-import-not-at-top

  dit_cfg = dit_configs.WAN_T2V_1_3B
  t5_cfg = UMT5_XXL
  if args.tiny:
    dit_cfg = dataclasses.replace(dit_configs.WAN_TINY, in_dim=16, out_dim=16)
    t5_cfg = dataclasses.replace(UMT5_TINY, d_model=dit_cfg.text_dim)
  text_encoder = UMT5Encoder(t5_cfg, PrecisionPolicy.named(args.precision), rngs=nnx.Rngs(1))
  vae = WanVAE(WanVAEConfig.tiny() if args.tiny else WanVAEConfig(), rngs=nnx.Rngs(2))
  return dit_cfg, text_encoder, vae


def memory_gib() -> tuple[float, float]:
  """(bytes in use, peak bytes in use) on the first local device in GiB; zeros where the backend keeps none."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_in_use", 0) / 2**30, stats.get("peak_bytes_in_use", 0) / 2**30


def versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}


def run_case(args, case: str, shared, tokenizer_path: Path) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from rehyat_jax.attention.config import RehyatConfig  # pylint: disable=g-import-not-at-top
  from rehyat_jax.attention.feature_maps import FeatureMapConfig  # pylint: disable=g-import-not-at-top
  from rehyat_jax.inference import Pipeline, generate  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.tokenizer import UMT5Tokenizer  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.wan import RuntimeConfig, WanDiT  # pylint: disable=g-import-not-at-top

  dit_cfg, text_encoder, vae = shared
  kind, frames = case.split(":")
  frames = int(frames)
  rehyat = None
  if kind != "teacher":
    fm = FeatureMapConfig(hidden=8, feature_dim=4) if args.tiny else FeatureMapConfig()
    rehyat = RehyatConfig(chunk_frames=args.chunk, overlap_frames=args.overlap, causal=True, feature_map=fm)
  dit = WanDiT(dit_cfg, RuntimeConfig(precision=args.precision), rehyat, rngs=nnx.Rngs(0))
  tokenizer = UMT5Tokenizer(tokenizer_path, text_len=dit_cfg.text_len)
  pipeline = Pipeline(dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae)
  results = generate(pipeline, ["a cat walks on the grass"] * args.videos, out_dir=args.out_dir, frames=frames,
                     height=args.height, width=args.width, steps=args.steps,
                     forward="recurrent" if kind == "recurrent" else "parallel", show_progress=False,
                     cfg_devices=args.cfg_devices)
  _, peak = memory_gib()
  steady = results[-1].seconds
  # With one video the timed video is the first: its time includes compiling the sampler and decoder.
  return {"case": kind, "frames": frames, "steps": args.steps, "videos": len(results),
          "first_video_s": results[0].seconds, "video_s": steady, "s_per_step": steady / args.steps,
          "timed_video_includes_compile": len(results) == 1, "peak_gib_so_far": peak,
          # Phases of the timed video: a peak that jumps between the two names its phase.
          "sampling_s": results[-1].sampling_seconds, "decode_write_s": results[-1].decode_seconds,
          "peak_gib_after_sampling": results[-1].peak_gib_after_sampling,
          "peak_gib_after_decode": results[-1].peak_gib_after_decode,
          "device": jax.devices()[0].device_kind, "cfg_devices": args.cfg_devices, **versions()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default="teacher:81,recurrent:81,recurrent:321")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--videos", type=int, default=2,
                 help="videos per case; the last is timed (with 1 its time includes compilation)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--chunk", type=int, default=3)
  p.add_argument("--overlap", type=int, default=1)
  p.add_argument("--precision", default="bf16_params")
  p.add_argument("--cfg-devices", type=int, default=1,
                 help="2: the prompt's and the negative prompt's DiT passes on two devices at once")
  p.add_argument("--out-dir", default="/tmp/bench_generate")
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args()
  if args.videos < 1:
    p.error(f"--videos must be >= 1; got {args.videos}")
  if args.tiny:
    args.height, args.width, args.steps, args.precision = 32, 32, 2, "fp32"
    if args.cases == p.get_default("cases"):
      args.cases = "teacher:5,recurrent:5,recurrent:13"
  # One process: umT5-XXL and the VAE are built once. The device's peak counter only grows, so each
  # row's peak is the peak so far (cases run in order of expected memory); with one case per process it
  # is that case's peak (shared parts resident, and any peak of building them, included: printed here).
  rows = []
  writer = use_opencv_writer_if_needed()
  t0 = time.perf_counter()
  shared = build_shared(args)
  in_use, peak = memory_gib()
  print(f"built shared parts in {time.perf_counter() - t0:.1f}s; device memory in use {in_use:.2f} GiB, "
        f"peak so far {peak:.2f} GiB", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_path = build_tokenizer(Path(tmp))
    for case in args.cases.split(","):
      try:
        rows.append(run_case(args, case, shared, tokenizer_path))
      except Exception as e:  # report and go on: one case's failure must not lose the others
        print(f"case {case} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        continue
      print(json.dumps(rows[-1]), flush=True)
  if rows:
    print(f"\n{rows[0]['device']}, jax {rows[0]['jax']}, jaxlib {rows[0]['jaxlib']}, flax {rows[0]['flax']}, "
          f"{args.height}x{args.width}, {args.steps} steps, CFG 5 on {args.cfg_devices} device(s), UniPC, {args.precision}; random weights; "
          f"video writer {writer}")
  timed = "2nd" if args.videos == 2 else ("only, incl. compile" if args.videos == 1 else f"last of {args.videos}")
  print(f"| case | frames | s / video ({timed}) | s / step | first video s (compile) | peak GiB so far |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['case']} | {r['frames']} | {r['video_s']:.1f} | {r['s_per_step']:.2f} | {r['first_video_s']:.1f} | "
          f"{r['peak_gib_so_far']:.2f} |")


if __name__ == "__main__":
  main()
