"""Tiny record shapes and hand-made writer inputs shared by the data tests."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from rehyat_jax.data.builders import LatentShapes

TINY_SHAPES = LatentShapes(latents=(4, 3, 4, 6), text=(12, 16))
NUM_EXAMPLES = 10


def tiny_examples(num_examples: int = NUM_EXAMPLES) -> list[dict]:
  """Writer inputs covering the input forms: bf16 / float32 embeddings, trimmed or with a shorter
  ``text_length``, with and without a (non-ASCII) caption."""
  rng = np.random.default_rng(123)
  max_length, width = TINY_SHAPES.text
  examples = []
  for index in range(num_examples):
    rows = 1 + index % max_length
    example = {
        "key": f"clip-{index:03d}",
        "latents": rng.standard_normal(TINY_SHAPES.latents).astype(np.float32),
        "text_embedding": rng.standard_normal((rows, width)).astype(np.float32),
    }
    if index % 2:
      example["text_embedding"] = example["text_embedding"].astype(ml_dtypes.bfloat16)
      example["caption"] = f"a cat number {index} — café"
    if index % 3 == 0:
      example["text_length"] = rows // 2  # the rows from it on must be dropped
    examples.append(example)
  return examples
