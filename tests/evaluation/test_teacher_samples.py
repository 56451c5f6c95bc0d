"""``python -m rehyat_jax.toy.teacher_samples`` writes the teacher's samples as a latent dataset the training data
path reads: one sample per training caption, conditioned on that caption, plus the real held-out clips."""

import numpy as np
import pytest

from rehyat_jax.data.pipeline import decode_record
from rehyat_jax.data.sources import open_latent_source
from rehyat_jax.toy import SHIPPED_TEACHER, teacher_samples, video


def read_all(source):
  return [decode_record(source[i]) for i in range(len(source))]


def test_teacher_samples_dataset(tmp_path, capsys):
  assert teacher_samples.main(["--teacher", str(SHIPPED_TEACHER), "--out", str(tmp_path), "--count", "3",
                               "--test-examples", "2", "--sample-steps", "2"]) == 0
  train, test = (read_all(open_latent_source(tmp_path, split)) for split in ("train", "test"))
  assert len(train) == 3 and len(test) == 2
  real = video.ToyVideoSource(3, seed=video.SPLIT_SEEDS["train"])
  by_key = {r["key"]: r for r in train}
  for i in range(3):
    record, clip = by_key[f"teacher-toy-0-{i}"], real.example(i)
    assert record["caption"] == clip["caption"]   # the caption it was conditioned on, kept with it
    np.testing.assert_array_equal(record["text_embedding"][:len(clip["text_embedding"])], clip["text_embedding"])
    assert record["latents"].shape == clip["latents"].shape and np.isfinite(record["latents"]).all()
    assert not np.allclose(record["latents"], clip["latents"])  # a sample, not the clip
  held_out = video.ToyVideoSource(2, seed=video.SPLIT_SEEDS["test"])
  np.testing.assert_array_equal(sorted(r["latents"].sum() for r in test),
                                sorted(held_out.example(i)["latents"].sum() for i in range(2)))


def test_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
  with pytest.raises(SystemExit):
    teacher_samples.main(["--teacher", str(tmp_path), "--out", str(tmp_path / "out")])
