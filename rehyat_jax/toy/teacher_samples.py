"""Stage-2 data the teacher made: its samples for the toy training captions, as a latent dataset.

  python -m rehyat_jax.toy.teacher_samples --teacher runs/toy_teacher/dit --out runs/toy/teacher_samples

Flow matching on real clips pulls a student toward the data, which the teacher only approximates; on clips
the teacher generated, fitting the data and matching the teacher are the same goal (on Wan2.1 this is
tools/generate_latents.py). Split 'train' holds one teacher sample per toy training caption (noise seed =
the clip's index, UniPC, no guidance: the toy condition has no negative prompt); split 'test' holds the real
held-out clips unchanged, so the evaluation ladder can read the same folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

BATCH = 32


def teacher_sample_examples(teacher_dir: str, count: int, sample_steps: int, shift: float, progress=print):
  """Writer examples of ``count`` teacher samples for the toy training split's captions."""
  import jax  # pylint: disable=g-import-not-at-top
  from rehyat_jax.convert import load_pretrained  # pylint: disable=g-import-not-at-top
  from rehyat_jax.core import prng  # pylint: disable=g-import-not-at-top
  from rehyat_jax.evaluation.ladder import LadderSettings, make_model_sampler  # pylint: disable=g-import-not-at-top
  from rehyat_jax.toy.video import SPLIT_SEEDS, ToyVideoSource  # pylint: disable=g-import-not-at-top

  source = ToyVideoSource(count, seed=SPLIT_SEEDS["train"])
  shape = source.spec.shapes.latents
  sampler = make_model_sampler(load_pretrained(teacher_dir),
                               LadderSettings(sample_steps=sample_steps, shift=shift, batch_size=BATCH))
  text_len, start = source.spec.text_len, time.perf_counter()
  for first in range(0, count, BATCH):
    examples = [source.example(i) for i in range(first, min(first + BATCH, count))]
    texts = np.zeros((len(examples), text_len, source.spec.text_dim), np.float32)
    for row, example in enumerate(examples):
      texts[row, :len(example["text_embedding"])] = example["text_embedding"]
    noise = np.stack([np.asarray(prng.normal(jax.random.key(first + row), shape)) for row in range(len(examples))])
    samples = sampler(noise, texts)
    for example, sample in zip(examples, samples):
      yield dict(example, key=f"teacher-{example['key']}", latents=sample.astype(np.float32))
    progress(f"{min(first + BATCH, count)}/{count} teacher samples ({time.perf_counter() - start:.0f} s)")


def main(argv: list[str] | None = None) -> int:
  from rehyat_jax.data.builders import WanLatentsDataset, finalize_dataset, write_shard  # pylint: disable=g-import-not-at-top
  from rehyat_jax.toy.video import SPLIT_SEEDS, ToyVideoSource  # pylint: disable=g-import-not-at-top

  p = argparse.ArgumentParser(prog="python -m rehyat_jax.toy.teacher_samples", description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", required=True, help="converted toy teacher DiT (e.g. runs/toy_teacher/dit)")
  p.add_argument("--out", required=True, help="output root; the dataset directory is printed")
  p.add_argument("--count", type=int, default=1024, help="teacher samples (training captions 0..count-1)")
  p.add_argument("--test-examples", type=int, default=128, help="real held-out clips copied into 'test'")
  p.add_argument("--sample-steps", type=int, default=20)
  p.add_argument("--shift", type=float, default=3.0)
  args = p.parse_args(argv)
  if not (Path(args.teacher) / "config.json").is_file():
    p.error(f"--teacher {args.teacher} is not a converted DiT checkpoint (no config.json)")
  spec = ToyVideoSource(1).spec
  builder = WanLatentsDataset(data_dir=args.out, shapes=spec.shapes)
  if builder.is_prepared():
    p.error(f"a dataset already exists at {builder.data_path}; remove it or write elsewhere")
  write_shard(builder, teacher_sample_examples(args.teacher, args.count, args.sample_steps, args.shift),
              split="train", shard_index=0, num_shards=1)
  write_shard(builder, ToyVideoSource(args.test_examples, seed=SPLIT_SEEDS["test"]).examples(), split="test",
              shard_index=0, num_shards=1)
  print(finalize_dataset(builder))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
