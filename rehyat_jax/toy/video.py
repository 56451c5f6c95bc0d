"""Procedural toy videos: shapes that move, bounce and rotate over a panning background, with a text-like
condition that describes them. Made by code, deterministic by (seed, index), fast (numpy, no VAE).

A clip is ``[C, F, H, W]`` float32 in [-1, 1] (RGB pixels stand in for VAE latents: the toy DiT's
``in_dim`` is the channel count). Its condition is one token per attribute of the description, in a
fixed order (shape, colour, direction, speed, rotation, camera pan, background), each token a fixed
random embedding of that attribute's value; rows past the attributes are zero padding, as Wan pads
umT5 output. Embedding values are bfloat16-representable, so a written dataset reads back exactly.

What in a clip needs which attention: the object's shape and colour (and the background) are the
same in every frame, so a frame can be denoised from far frames (long range); its position follows
a straight path with bounces and its angle a constant spin, so neighbouring frames predict it best
(local). The start position and phase are random and not in the text, so only the video itself
carries them across frames.

  python -m rehyat_jax.toy.video --out runs/toy/data        # train + test splits as a TFDS latent dataset
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
from pathlib import Path
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from rehyat_jax.data.builders import LatentShapes, make_latent_record

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {  # RGB in [-1, 1]
    "red": (0.9, -0.8, -0.8), "green": (-0.8, 0.8, -0.7), "blue": (-0.7, -0.6, 0.9), "yellow": (0.9, 0.8, -0.8),
    "cyan": (-0.8, 0.8, 0.8), "magenta": (0.8, -0.7, 0.8), "white": (0.9, 0.9, 0.9), "orange": (0.9, 0.1, -0.8),
}
DIRECTIONS = {"right": (1, 0), "up-right": (1, -1), "up": (0, -1), "up-left": (-1, -1), "left": (-1, 0),
              "down-left": (-1, 1), "down": (0, 1), "down-right": (1, 1)}  # (dx, dy), image y grows downwards
SPEEDS = {"slowly": 0.035, "fast": 0.08}                     # image widths per frame
ROTATIONS = {"not rotating": 0.0, "rotating clockwise": 0.35, "rotating counter-clockwise": -0.35}  # rad / frame
PANS = {"static camera": (0, 0), "camera pans left": (-1, 0), "camera pans right": (1, 0),
        "camera pans up": (0, -1), "camera pans down": (0, 1)}
PAN_SPEED = 0.04                                             # image widths per frame
BACKGROUNDS = {"dark background": -0.55, "grey background": -0.1}
ATTRIBUTES = (("shape", SHAPES), ("colour", tuple(COLOURS)), ("direction", tuple(DIRECTIONS)),
              ("speed", tuple(SPEEDS)), ("rotation", tuple(ROTATIONS)), ("pan", tuple(PANS)),
              ("background", tuple(BACKGROUNDS)))
VOCAB_SEED = 20261202  # the attribute embeddings are fixed: every dataset and split shares them


@dataclasses.dataclass(frozen=True)
class ToyVideoSpec:
  """Clip and condition sizes. ``text_len`` >= the number of attributes (7); the rest is padding."""

  frames: int = 13
  height: int = 16
  width: int = 16
  channels: int = 3
  text_len: int = 8
  text_dim: int = 32

  def __post_init__(self):
    if min(self.frames, self.height, self.width, self.text_dim) < 1 or self.channels != 3:
      raise ValueError(f"ToyVideoSpec needs positive sizes and 3 (RGB) channels, got {self}")
    if self.text_len < len(ATTRIBUTES):
      raise ValueError(f"text_len={self.text_len} is shorter than the {len(ATTRIBUTES)} attribute tokens")

  @property
  def shapes(self) -> LatentShapes:
    return LatentShapes(latents=(self.channels, self.frames, self.height, self.width),
                        text=(self.text_len, self.text_dim))


def attribute_embeddings(text_dim: int) -> dict[str, np.ndarray]:
  """Attribute -> [num values, text_dim] fixed random embeddings (unit RMS, bfloat16-representable)."""
  rng = np.random.default_rng([VOCAB_SEED, text_dim])
  out = {}
  for name, values in ATTRIBUTES:
    table = rng.standard_normal((len(values), text_dim)).astype(np.float32)
    out[name] = table.astype(ml_dtypes.bfloat16).astype(np.float32)
  return out


def describe(choice: dict[str, int]) -> str:
  """The caption of a clip's attribute choice (value indices per attribute)."""
  value = {name: values[choice[name]] for name, values in ATTRIBUTES}
  return (f"a {value['colour']} {value['shape']} moving {value['direction']} {value['speed']}, "
          f"{value['rotation']}, {value['pan']}, {value['background']}")


def text_embedding(choice: dict[str, int], spec: ToyVideoSpec, tables: dict[str, np.ndarray] | None = None
                   ) -> np.ndarray:
  """[text_len, text_dim]: one token per attribute in ``ATTRIBUTES`` order, then zero rows."""
  tables = tables if tables is not None else attribute_embeddings(spec.text_dim)
  out = np.zeros((spec.text_len, spec.text_dim), np.float32)
  for row, (name, _) in enumerate(ATTRIBUTES):
    out[row] = tables[name][choice[name]]
  return out


def _bounce(start: np.ndarray, travel: np.ndarray, low: float, high: float) -> np.ndarray:
  """Positions start + travel reflected into [low, high] (a triangle wave: elastic bounces off the walls)."""
  span = high - low
  phase = np.mod(start - low + travel, 2 * span)
  return low + np.where(phase > span, 2 * span - phase, phase)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, angle: np.ndarray, radius: float) -> np.ndarray:
  """Signed distance (image widths, < 0 inside) of ``shape`` centred at the origin, rotated by ``angle``.
  ``dx, dy``: [F, H, W] offsets from the centre; ``angle``: [F, 1, 1]."""
  cos, sin = np.cos(angle), np.sin(angle)
  u, v = cos * dx + sin * dy, -sin * dx + cos * dy        # coordinates in the shape's frame
  if shape == "circle":
    return np.hypot(dx, dy) - radius
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) - 0.8 * radius
  if shape == "triangle":  # intersection of three half-planes, inradius radius / 2
    normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
    return np.max([nx * u + ny * v for nx, ny in normals], axis=0) - 0.5 * radius
  if shape == "cross":     # union of two bars
    bar = lambda a, b: np.maximum(np.abs(a) - radius, np.abs(b) - 0.3 * radius)
    return np.minimum(bar(u, v), bar(v, u))
  raise ValueError(f"unknown shape {shape!r}")


def render_clip(choice: dict[str, int], spec: ToyVideoSpec, rng: np.random.Generator) -> np.ndarray:
  """[3, F, H, W] float32 in [-1, 1]: the described object over a striped background that the camera pans
  across; start position, start angle, the stripes' phase and the background's tint are drawn from ``rng``."""
  f, h, w = spec.frames, spec.height, spec.width
  t = np.arange(f, dtype=np.float64)[:, None, None]
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / w, (np.arange(w) + 0.5) / w, indexing="ij")  # widths as unit
  ys, xs = ys[None], xs[None]
  # Background: soft stripes, moved by the camera pan (the world moves opposite to the camera). A panning
  # camera's stripes run across the pan, so the pan is visible; a static camera's point anywhere.
  pan_direction = np.asarray(PANS[tuple(PANS)[choice["pan"]]], np.float64)
  pan = pan_direction * PAN_SPEED
  level = BACKGROUNDS[tuple(BACKGROUNDS)[choice["background"]]]
  angle_k = np.arctan2(pan_direction[1], pan_direction[0]) if pan_direction.any() else rng.uniform(0, np.pi)
  phase = rng.uniform(0, 2 * np.pi)
  texture = np.sin(2 * np.pi * 2.0 * ((xs + pan[0] * t) * np.cos(angle_k) + (ys + pan[1] * t) * np.sin(angle_k))
                   + phase)                                                # [F, H, W] in [-1, 1]
  tint = rng.uniform(-0.15, 0.15, 3)
  background = np.stack([level + tint[c] + 0.2 * texture for c in range(3)])  # [3, F, H, W]
  # Object: straight path with bounces, constant spin; size fixed per clip.
  radius = 0.17
  height_units = h / w
  direction = np.asarray(DIRECTIONS[tuple(DIRECTIONS)[choice["direction"]]], np.float64)
  velocity = direction / np.linalg.norm(direction) * SPEEDS[tuple(SPEEDS)[choice["speed"]]]
  start = rng.uniform([radius, radius], [1 - radius, height_units - radius])
  cx = _bounce(start[0], velocity[0] * t, radius, 1 - radius)
  cy = _bounce(start[1], velocity[1] * t, radius, height_units - radius)
  angle = rng.uniform(0, 2 * np.pi) + ROTATIONS[tuple(ROTATIONS)[choice["rotation"]]] * t
  sdf = _signed_distance(SHAPES[choice["shape"]], xs - cx, ys - cy, angle, radius)
  alpha = 1.0 / (1.0 + np.exp(sdf * w / 0.6))                              # ~0.6-pixel soft edge
  colour = np.asarray(COLOURS[tuple(COLOURS)[choice["colour"]]], np.float64)[:, None, None, None]
  clip = background * (1 - alpha[None]) + colour * alpha[None]
  return np.clip(clip, -1.0, 1.0).astype(np.float32)


def draw_choice(rng: np.random.Generator) -> dict[str, int]:
  return {name: int(rng.integers(len(values))) for name, values in ATTRIBUTES}


def make_example(spec: ToyVideoSpec, seed: int, index: int, tables: dict[str, np.ndarray] | None = None
                 ) -> dict[str, Any]:
  """Writer input of clip ``index`` of ``seed`` (``key``, ``latents``, ``text_embedding``, ``caption``);
  depends only on (spec, seed, index)."""
  rng = np.random.default_rng([seed, index])
  choice = draw_choice(rng)
  return {"key": f"toy-{seed}-{index}", "latents": render_clip(choice, spec, rng),
          "text_embedding": text_embedding(choice, spec, tables)[:len(ATTRIBUTES)], "caption": describe(choice)}


@dataclasses.dataclass(frozen=True)
class ToyVideoSource:
  """``num_examples`` toy clips as stored latent records (the structure ``rehyat_jax.data.sources`` return),
  record ``i`` a function of (spec, seed, i) only."""

  num_examples: int
  spec: ToyVideoSpec = ToyVideoSpec()
  seed: int = 0

  def __post_init__(self):
    if self.num_examples < 1 or self.seed < 0:
      raise ValueError(f"need num_examples >= 1 and seed >= 0, got {self.num_examples}, {self.seed}")
    object.__setattr__(self, "_tables", attribute_embeddings(self.spec.text_dim))

  def __len__(self) -> int:
    return self.num_examples

  def example(self, index: int) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} is outside [0, {self.num_examples})")
    return make_example(self.spec, self.seed, index, self._tables)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = make_latent_record(self.example(index), self.spec.shapes)
    return dict(record, caption=record["caption"].encode(), key=record["key"].encode(),
                text_length=int(record["text_length"]))

  def examples(self) -> Iterator[dict[str, Any]]:
    return (self.example(i) for i in range(self.num_examples))


# Disjoint seeds per split: the test clips are never seen in training.
SPLIT_SEEDS = {"train": 0, "test": 1}


def write_toy_dataset(out_dir: str | Path, spec: ToyVideoSpec = ToyVideoSpec(), *, train_examples: int = 2048,
                      test_examples: int = 128, seed: int = 0) -> Path:
  """Writes the 'train' and 'test' splits as one TFDS latent dataset; returns the directory that
  ``data.data_dir`` (and ``python -m rehyat_jax.evaluate --data``) takes."""
  from rehyat_jax.data.builders import WanLatentsDataset, finalize_dataset, write_shard  # pylint: disable=g-import-not-at-top
  builder = WanLatentsDataset(data_dir=out_dir, shapes=spec.shapes)
  if builder.is_prepared():
    raise FileExistsError(f"a dataset already exists at {builder.data_path}; remove it or write elsewhere")
  for split, count in (("train", train_examples), ("test", test_examples)):
    source = ToyVideoSource(count, spec, seed=seed * len(SPLIT_SEEDS) + SPLIT_SEEDS[split])
    write_shard(builder, source.examples(), split=split, shard_index=0, num_shards=1)
  return finalize_dataset(builder)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output root; the dataset directory is printed")
  parser.add_argument("--train-examples", type=int, default=2048)
  parser.add_argument("--test-examples", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  for field in dataclasses.fields(ToyVideoSpec):
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
  args = parser.parse_args(argv)
  spec = ToyVideoSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ToyVideoSpec)})
  path = write_toy_dataset(args.out, spec, train_examples=args.train_examples, test_examples=args.test_examples,
                           seed=args.seed)
  print(path)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
