"""Run observability: one progress line per interval, a JSONL log, TensorBoard event files, and the
end-of-stage-1 per-block error table and plot."""

from __future__ import annotations

import json
import time
import io
import tempfile

from etils import epath

import numpy as np

# Dense bf16 peak per chip (vendor datasheets) for the model-FLOP-utilisation estimate.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}
TIMESTEP_BUCKETS = (0, 250, 500, 750, 1001)


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return flops
  return None


def estimate_step_flops(model_cfg, *, batch: int, frames: int, tokens_per_frame: int, teacher_softmax: bool,
                        backward: bool, window_frames: int) -> float:
  """Analytic model FLOPs of one train step (matmuls only), for the MFU estimate.

  XLA's cost analysis counts a scanned layer once, so it cannot be used with a layer scan.
  Per sample: every linear layer (2 FLOPs per weight per token), cross-attention over the text,
  and self-attention scores + values over S keys per query: with ``teacher_softmax`` (stage 1)
  the teacher's full softmax (S = all tokens) and the hybrid's window (S = window tokens), else
  the student's window only; ``backward`` (stage 2) triples the count, while stage 1's backward
  through phi alone is negligible.
  """
  d, f, L, text = model_cfg.dim, model_cfg.ffn_dim, model_cfg.num_layers, model_cfg.text_len
  tokens = frames * tokens_per_frame
  window = min(window_frames, frames) * tokens_per_frame
  linear = 2 * tokens * L * (6 * d * d + 2 * d * f) + 2 * text * L * 2 * d * d
  cross = 4 * tokens * text * d * L
  keys = tokens + window if teacher_softmax else window
  self_attn = 4 * tokens * keys * d * L
  return batch * (3 if backward else 1) * float(linear + cross + self_attn)


def bucket_means(values: np.ndarray, timesteps: np.ndarray) -> dict[str, float]:
  """Mean of per-sample ``values`` in each timestep bucket that has samples."""
  out = {}
  for lo, hi in zip(TIMESTEP_BUCKETS[:-1], TIMESTEP_BUCKETS[1:]):
    sel = (timesteps >= lo) & (timesteps < hi)
    if sel.any():
      out[f"t{lo}-{hi - 1}"] = float(values[sel].mean())
  return out


def format_duration(seconds: float) -> str:
  """'42 s', '3.5 min' or '2.1 h': a time left that reads at a glance at any scale."""
  if seconds < 120:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class RunLogger:
  def __init__(self, workdir: epath.Path, *, total_steps: int, tokens_per_step: int, num_devices: int, device_kind: str,
               enabled: bool = True):
    self.workdir, self.total_steps, self.tokens_per_step = workdir, total_steps, tokens_per_step
    self.num_devices, self.peak = num_devices, peak_flops(device_kind)
    self.flops_per_step = None
    self.enabled = enabled
    self.start = self.last_time = time.perf_counter()
    self.last_step = None
    self.device_seconds = 0.0
    self.jsonl = None
    self.tb = None
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      self.jsonl = (workdir / "metrics.jsonl").open("a")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # tensorboardX writes local files only: for a remote workdir the events stay on this host.
      tb_dir = workdir / "tensorboard" if "://" not in str(workdir) else tempfile.mkdtemp(prefix="rehyat_tb_")
      self.tb = SummaryWriter(str(tb_dir))

  def reset_clock(self, step: int) -> None:
    """Start timing from ``step`` (after the first step, so compilation is not counted as speed)."""
    self.last_step, self.last_time = step, time.perf_counter()

  def log(self, step: int, scalars: dict[str, float]) -> str:
    now = time.perf_counter()
    if self.last_step is None:
      self.last_step, self.last_time = step - 1, self.start
    if step == self.last_step:  # logged where the clock was reset: the step so far included compilation
      line = (f"step {step}/{self.total_steps} loss {scalars['loss']:.5f} (this step included compilation; speed "
              "and ETA from the next logged step)")
    else:
      steps = step - self.last_step
      dt = max(now - self.last_time, 1e-9)
      self.device_seconds += dt * self.num_devices
      steps_per_s = steps / dt
      scalars = dict(scalars, steps_per_s=steps_per_s, tokens_per_s=steps_per_s * self.tokens_per_step,
                     device_hours=self.device_seconds / 3600)
      mfu = ""
      if self.flops_per_step and self.peak:
        scalars["mfu"] = steps_per_s * self.flops_per_step / (self.peak * self.num_devices)
        mfu = f" MFU {scalars['mfu']:.1%}"
      eta = (self.total_steps - step) / steps_per_s
      line = (f"step {step}/{self.total_steps} loss {scalars['loss']:.5f} {steps_per_s:.2f} steps/s "
              f"{scalars['tokens_per_s']:.0f} tok/s{mfu} ETA {format_duration(eta)} "
              f"device-h {scalars['device_hours']:.4f}")
    self.last_step, self.last_time = step, now
    if self.enabled:
      print(line, flush=True)
      self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self.jsonl.flush()
      for name, value in scalars.items():
        self.tb.add_scalar(name, value, step)
    return line

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def block_error_report(workdir: epath.Path, relative_error: np.ndarray, baseline_error: np.ndarray,
                       converted: tuple[bool, ...], output_error: np.ndarray | None = None) -> str:
  """Table + PNG of per-block relative attention error (|softmax - hybrid| / |softmax|) for the
  trained phi and for phi == 0, and (when measured) each block's output error converted alone; also
  writes per_block_error.json for tools/rank_blocks.py."""
  effect = output_error is not None
  rows = ["| block | converted | rel. error (trained phi) | rel. error (phi = 0) | ratio |"
          + (" output error, this block alone |" if effect else ""), "|---|---|---|---|---|" + ("---|" if effect else "")]
  for i, (err, base, conv) in enumerate(zip(relative_error, baseline_error, converted)):
    ratio = err / base if conv and base > 0 else float("nan")
    rows.append(f"| {i} | {'yes' if conv else 'no'} | {err:.4f} | {base:.4f} | {ratio:.3f} |"
                + (f" {output_error[i]:.3g} |" if effect else ""))
  table = "\n".join(rows)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "per_block_error.md").write_text(table + "\n")
  report = {"relative_error": [float(x) for x in relative_error], "baseline_error": [float(x) for x in baseline_error],
            "converted": list(converted)}
  if effect:
    report["output_error"] = [float(x) for x in output_error]
  (workdir / "per_block_error.json").write_text(json.dumps(report, indent=1))
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 3.5))
  idx = np.arange(len(relative_error))
  ax.bar(idx - 0.2, baseline_error, 0.4, label="phi = 0 (chunk-local softmax)")
  ax.bar(idx + 0.2, relative_error, 0.4, label="distilled phi")
  ax.set_xlabel("block")
  ax.set_ylabel("|softmax - hybrid| / |softmax|")
  ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  (workdir / "per_block_error.png").write_bytes(png.getvalue())
  plt.close(fig)
  return table
