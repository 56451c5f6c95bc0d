"""The ladder's outputs: a markdown table, ``ladder.json``, PNG plots, and a side-by-side strip (PNG + GIF)
of teacher | student | chunk-local samples."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rehyat_jax.evaluation.ladder import mean_attention_error

COLUMNS = ("rung", "(a) attn. err", "(a) / phi=0", "(a) L2 err", "(b) vel. err", "(c) PSNR dB", "(c) SSIM", "(d) motion ratio",
           "(d) motion err", "(d) seam")


def _fmt(value: float, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if math.isinf(value):
    return "∞"
  return f"{value:.{digits}g}"


def baseline_of(results: dict, rung: dict) -> dict | None:
  """The chunk-local rung of the student ``rung`` belongs to."""
  return next((r for r in results["rungs"] if r["kind"] == "chunk-local" and r["student"] == rung.get("student")
               and rung.get("student")), None)


def table(results: dict) -> str:
  """One markdown row per rung. (a): relative L1 error, its ratio to the student's phi = 0 baseline and the
  relative squared error, means over converted blocks and timesteps; (b): mean over timesteps."""
  rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for rung in results["rungs"]:
    attention = mean_attention_error(rung) if "attention_error" in rung else float("nan")
    attention_l2 = mean_attention_error(rung, "attention_error_l2") if "attention_error_l2" in rung else float("nan")
    base = baseline_of(results, rung)
    ratio = attention / mean_attention_error(base) if base is not None and rung["kind"] == "student" else float("nan")
    velocity = float(np.mean(rung["velocity_error"])) if "velocity_error" in rung else float("nan")
    s = rung["samples"]
    rows.append("| " + " | ".join([rung["name"], _fmt(attention), _fmt(ratio, 3), _fmt(attention_l2), _fmt(velocity), _fmt(s["psnr"], 4),
                                   _fmt(s["ssim"], 3), _fmt(s["motion_ratio"], 3), _fmt(s["motion_error"], 3),
                                   _fmt(s.get("boundary_jump", float("nan")), 3)]) + " |")
  return "\n".join(rows)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: Path) -> Path:
  plt = _pyplot()
  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  path.write_bytes(buffer.getvalue())
  return path


def plot_attention_error(results: dict, path: Path) -> Path:
  plt = _pyplot()
  rungs = [r for r in results["rungs"] if r["kind"] in ("student", "chunk-local") and any(r["converted"])]
  fig, ax = plt.subplots(figsize=(7, 3.2))
  width = 0.8 / max(len(rungs), 1)
  for i, rung in enumerate(rungs):
    per_block = np.asarray(rung["attention_error"]).mean(axis=0)
    blocks = np.arange(len(per_block))
    ax.bar(blocks + (i - (len(rungs) - 1) / 2) * width, np.where(rung["converted"], per_block, np.nan), width,
           label=rung["name"])
  ax.set_yscale("log")
  ax.set_xlabel("block")
  ax.set_ylabel("|softmax - hybrid| / |softmax|")
  ax.set_title("(a) per-block relative attention error, held-out clips, mean over timesteps", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_velocity_error(results: dict, path: Path) -> Path:
  plt = _pyplot()
  timesteps = results["settings"]["timesteps"]
  fig, ax = plt.subplots(figsize=(7, 3.2))
  for rung in results["rungs"]:
    if rung["kind"] in ("teacher", "floor"):
      continue
    ax.plot(timesteps, rung["velocity_error"], marker="o", label=rung["name"])
  ax.set_yscale("log")
  ax.set_xlabel("timestep t (= 1000 sigma)")
  ax.set_ylabel("|v - v_teacher|^2 / |v_teacher|^2")
  ax.set_title("(b) velocity error on the same noisy held-out inputs", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_samples(results: dict, path: Path) -> Path:
  plt = _pyplot()
  rungs = [r for r in results["rungs"] if r["kind"] != "teacher"]
  names = [r["name"] for r in rungs]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, key, label in ((axes[0], "psnr", "PSNR vs teacher sample (dB)"), (axes[1], "ssim", "SSIM vs teacher sample")):
    ax.barh(np.arange(len(rungs)), [r["samples"][key] for r in rungs], color="tab:green")
    ax.set_yticks(np.arange(len(rungs)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(label, fontsize=8)
  fig.suptitle("(c) same-seed sample agreement (higher is closer to the teacher)", fontsize=9)
  return _save(fig, path)


def plot_temporal(results: dict, path: Path) -> Path:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.2))
  tc = results["chunk_frames"]
  for name, curve in results["frame_differences"].items():
    ax.plot(np.arange(len(curve)) + 0.5, curve, marker=".", label=name,
            linestyle="--" if name == "teacher, other seed" else "-")
  pairs = len(next(iter(results["frame_differences"].values())))
  for boundary in range(tc, pairs + 1, tc):
    ax.axvline(boundary, color="grey", linewidth=0.6, linestyle=":")
  ax.set_xlabel("frame (dotted: chunk boundaries)")
  ax.set_ylabel("mean |x_{f+1} - x_f|")
  ax.set_title("(d) frame-to-frame change of the samples", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def _to_uint8(video: np.ndarray, scale: int) -> np.ndarray:
  """[C, F, H, W] in [-1, 1] -> [F, H*scale, W*scale, 3] uint8 (nearest-neighbour upscaling)."""
  frames = np.clip((np.asarray(video).transpose(1, 2, 3, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def strip(samples: dict[str, np.ndarray], names: list[str], path_png: Path, path_gif: Path, *, clips: int = 3,
          scale: int = 4) -> tuple[Path, Path]:
  """PNG: for each of the first ``clips`` clips one row per model (``names``), frames left to right.
  GIF: the models side by side (columns), clips stacked (rows), one GIF frame per video frame."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  clips = min(clips, len(next(iter(samples.values()))))
  videos = {name: [_to_uint8(samples[name][i], scale) for i in range(clips)] for name in names}
  frames, h, w, _ = videos[names[0]][0].shape
  label_w, gap = 110, 2
  rows = clips * len(names)
  sheet = Image.new("RGB", (label_w + frames * (w + gap), rows * (h + gap) + clips * 6), "white")
  draw = ImageDraw.Draw(sheet)
  y = 0
  for i in range(clips):
    for name in names:
      draw.text((4, y + h // 2 - 6), f"{name}\nclip {i}", fill="black")
      for f in range(frames):
        sheet.paste(Image.fromarray(videos[name][i][f]), (label_w + f * (w + gap), y))
      y += h + gap
    y += 6
  sheet.save(path_png)
  header = 14
  gif_frames = []
  for f in range(frames):
    canvas = Image.new("RGB", (len(names) * (w + gap), header + clips * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
      draw.text((j * (w + gap) + 2, 1), name[:12], fill="black")
      for i in range(clips):
        canvas.paste(Image.fromarray(videos[name][i][f]), (j * (w + gap), header + i * (h + gap)))
    gif_frames.append(canvas)
  gif_frames[0].save(path_gif, save_all=True, append_images=gif_frames[1:], duration=180, loop=0)
  return path_png, path_gif


def _json_ready(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items() if k != "arrays"}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
    return str(value)  # JSON has no inf / nan
  if isinstance(value, (np.floating, np.integer)):
    return _json_ready(value.item())
  return value


def write_report(results: dict, out_dir: str | Path, *, strip_names: list[str] | None = None) -> dict[str, str]:
  """Writes ladder.md, ladder.json, the four plots and the strip; returns name -> path."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  text = table(results)
  paths = {"table": out / "ladder.md", "json": out / "ladder.json"}
  paths["table"].write_text(text + "\n")
  paths["json"].write_text(json.dumps(_json_ready(results), indent=1) + "\n")
  paths["attention_error"] = plot_attention_error(results, out / "attention_error.png")
  paths["velocity_error"] = plot_velocity_error(results, out / "velocity_error.png")
  paths["sample_agreement"] = plot_samples(results, out / "sample_agreement.png")
  paths["temporal"] = plot_temporal(results, out / "temporal.png")
  samples = results["arrays"]["samples"]
  if strip_names is None:
    strip_names = ["teacher"] + [r["name"] for r in results["rungs"] if r["kind"] in ("student", "chunk-local")][:2]
  paths["strip_png"], paths["strip_gif"] = strip(samples, strip_names, out / "strip.png", out / "strip.gif")
  return {k: str(v) for k, v in paths.items()}
