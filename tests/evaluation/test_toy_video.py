"""The procedural toy videos: deterministic, in range, moving as described, and readable by the training data path."""

import numpy as np
import pytest

from rehyat_jax.data.pipeline import decode_record, make_train_iterator
from rehyat_jax.data.sources import open_latent_source
from rehyat_jax.toy import video

SMALL = video.ToyVideoSpec(frames=9, height=16, width=16, text_len=8, text_dim=16)


def test_same_seed_and_index_give_the_same_clip():
  a, b = video.ToyVideoSource(4, SMALL, seed=3), video.ToyVideoSource(4, SMALL, seed=3)
  for i in range(4):
    np.testing.assert_array_equal(a.example(i)["latents"], b.example(i)["latents"])
    assert a.example(i)["caption"] == b.example(i)["caption"]
  assert not np.array_equal(a.example(0)["latents"], a.example(1)["latents"])
  assert not np.array_equal(a.example(0)["latents"], video.ToyVideoSource(4, SMALL, seed=4).example(0)["latents"])


def test_clip_shape_and_range():
  clip = video.ToyVideoSource(1, SMALL).example(0)["latents"]
  assert clip.shape == (3, 9, 16, 16) and clip.dtype == np.float32
  assert clip.min() >= -1.0 and clip.max() <= 1.0 and clip.std() > 0.05


def test_bounce_reflects_at_the_walls():
  # 0.5 + 0.6 in [0.2, 0.8]: reaches 0.8 after 0.3, comes back 0.3 -> 0.5; -0.5 the other way -> 0.2 + 0.2 = 0.4.
  np.testing.assert_allclose(video._bounce(0.5, np.array([0.0, 0.2, 0.6, -0.5]), 0.2, 0.8), [0.5, 0.7, 0.5, 0.4])


@pytest.mark.parametrize("speed", ["slowly", "fast"])
def test_the_object_moves_at_the_described_speed(speed):
  names = {name: values for name, values in video.ATTRIBUTES}
  choice = {"shape": names["shape"].index("circle"), "colour": names["colour"].index("white"),
            "direction": names["direction"].index("right"), "speed": names["speed"].index(speed),
            "rotation": 0, "pan": names["pan"].index("static camera"),
            "background": names["background"].index("dark background")}
  spec = video.ToyVideoSpec(frames=9, height=32, width=32)
  clip = video.render_clip(choice, spec, np.random.default_rng(0))
  bright = clip.min(axis=0) > 0.5                   # white object on a dark background: [F, H, W]
  xs = np.arange(spec.width)[None, None, :]
  centroid = (bright * xs).sum(axis=(1, 2)) / bright.sum(axis=(1, 2))
  step = np.median(np.abs(np.diff(centroid)))       # bounces flip the sign, not the speed
  assert step == pytest.approx(video.SPEEDS[speed] * spec.width, rel=0.2)


def test_text_embedding_has_one_token_per_attribute_and_zero_padding():
  tables = video.attribute_embeddings(SMALL.text_dim)
  a = {name: 0 for name, _ in video.ATTRIBUTES}
  b = dict(a, colour=1)
  ea, eb = video.text_embedding(a, SMALL, tables), video.text_embedding(b, SMALL, tables)
  colour_row = [name for name, _ in video.ATTRIBUTES].index("colour")
  changed = np.flatnonzero(np.abs(ea - eb).sum(axis=1))
  assert changed.tolist() == [colour_row]
  assert not ea[len(video.ATTRIBUTES):].any()
  assert "red" in video.describe(a) and "green" in video.describe(b)


def test_written_dataset_reads_back_through_the_training_pipeline(tmp_path):
  path = video.write_toy_dataset(tmp_path, SMALL, train_examples=6, test_examples=2)
  train, test = open_latent_source(path, "train"), open_latent_source(path, "test")
  assert len(train) == 6 and len(test) == 2
  expected = {e["key"]: e for e in video.ToyVideoSource(6, SMALL, seed=video.SPLIT_SEEDS["train"]).examples()}
  for i in range(len(train)):
    record = decode_record(train[i])
    np.testing.assert_array_equal(record["latents"], expected[record["key"]]["latents"])
    rows = len(video.ATTRIBUTES)
    np.testing.assert_array_equal(record["text_embedding"][:rows], expected[record["key"]]["text_embedding"])
  test_keys = {decode_record(test[i])["key"] for i in range(len(test))}
  assert not test_keys & set(expected)             # the held-out split is other clips
  batch = next(make_train_iterator(train, global_batch_size=2, seed=0))
  assert batch["latents"].shape == (2, 3, 9, 16, 16) and batch["text_embedding"].shape == (2, 8, 16)
