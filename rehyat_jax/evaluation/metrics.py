"""Comparison metrics of the evaluation ladder, on host numpy arrays (videos are ``[B, C, F, H, W]``).

Every metric compares a candidate with a reference (the teacher) of the same shape and returns one value
per sample, so callers can average, or report spread, as they like.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _per_sample(x: np.ndarray) -> np.ndarray:
  return x.reshape(x.shape[0], -1)


def mse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """[B] mean squared difference."""
  x, ref = _checked(x, ref)
  return np.mean(_per_sample(x - ref) ** 2, axis=1)


def relative_mse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """[B] |x - ref|^2 / |ref|^2 (0 = identical, 1 = as far as predicting zero)."""
  x, ref = _checked(x, ref)
  return np.sum(_per_sample(x - ref) ** 2, axis=1) / np.maximum(np.sum(_per_sample(ref) ** 2, axis=1), 1e-30)


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
  """[B] peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE); +inf where identical."""
  err = mse(x, ref)
  with np.errstate(divide="ignore"):
    return np.where(err > 0, 10.0 * np.log10(data_range ** 2 / np.maximum(err, 1e-300)), np.inf)


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float, *, sigma: float = 1.5, win_size: int = 7) -> np.ndarray:
  """[B] structural similarity (Wang et al. 2004) per 2-D frame and channel, averaged over them.

  Gaussian-weighted local statistics (``sigma``, the Gaussian truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03,
  unbiased (sample) covariances normalised for a ``win_size`` window, and the mean over the positions at least
  ``(win_size - 1) / 2`` from the border: skimage's ``structural_similarity(gaussian_weights=True,
  use_sample_covariance=True, win_size=7)`` to 1e-6 (tests/evaluation/test_metrics.py), with 7 rather than 11
  so that 16x16 frames keep 10x10 positions. Hand-written on scipy so that the library does not depend on
  scikit-image (a test-only reference).
  """
  x, ref = _checked(x, ref)
  if x.ndim < 3 or min(x.shape[-2:]) < win_size:
    raise ValueError(f"ssim needs frames of at least {win_size}x{win_size}; got shape {x.shape}")
  b, (h, w) = x.shape[0], x.shape[-2:]
  frames_x = x.reshape(-1, h, w).astype(np.float64)
  frames_r = ref.reshape(-1, h, w).astype(np.float64)
  truncate = 3.5  # the Gaussian itself reaches 3.5 sigma, as skimage's; win_size only sets the crop and the covariance norm
  blur = lambda a: ndimage.gaussian_filter(a, sigma=(0, sigma, sigma), truncate=truncate, mode="reflect")
  n = win_size * win_size
  cov_norm = n / (n - 1)
  mu_x, mu_r = blur(frames_x), blur(frames_r)
  var_x = cov_norm * (blur(frames_x * frames_x) - mu_x * mu_x)
  var_r = cov_norm * (blur(frames_r * frames_r) - mu_r * mu_r)
  cov = cov_norm * (blur(frames_x * frames_r) - mu_x * mu_r)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2))
  pad = (win_size - 1) // 2
  s = s[:, pad:h - pad, pad:w - pad]
  return s.reshape(b, -1).mean(axis=1)


def frame_differences(video: np.ndarray) -> np.ndarray:
  """[B, F-1]: mean |x_{f+1} - x_f| over channels and pixels, per consecutive frame pair."""
  video = np.asarray(video, np.float64)
  if video.ndim != 5:
    raise ValueError(f"videos are [B, C, F, H, W]; got shape {video.shape}")
  return np.abs(np.diff(video, axis=2)).mean(axis=(1, 3, 4))


def temporal_consistency(video: np.ndarray, ref: np.ndarray, chunk_frames: int) -> dict[str, np.ndarray]:
  """Frame-to-frame statistics of ``video`` next to the reference's, per sample ([B] each).

  ``motion_ratio``: mean frame difference / the reference's (1 = as much change as the teacher; chunk-local
  attention tends to freeze or jitter). ``motion_error``: mean |d(x) - d(ref)| / mean |d(ref)| over the
  consecutive-frame differences d (0 = the same motion). ``boundary_jump``: mean frame difference across
  chunk boundaries (frames Tc-1 -> Tc, 2Tc-1 -> 2Tc, ...) over the mean inside chunks, divided by the same
  ratio of the reference (1 = no seam at chunk boundaries beyond the teacher's own).
  """
  x, ref = _checked(video, ref)
  d, d_ref = np.diff(x.astype(np.float64), axis=2), np.diff(ref.astype(np.float64), axis=2)
  pairs = d.shape[2]
  mean_abs = lambda t: np.abs(t).mean(axis=(1, 3, 4))   # [B, F-1]
  m, m_ref = mean_abs(d), mean_abs(d_ref)
  out = {"motion_ratio": m.mean(axis=1) / np.maximum(m_ref.mean(axis=1), 1e-12),
         "motion_error": np.abs(d - d_ref).reshape(d.shape[0], -1).mean(axis=1)
         / np.maximum(np.abs(d_ref).reshape(d.shape[0], -1).mean(axis=1), 1e-12)}
  boundary = np.zeros(pairs, bool)
  boundary[chunk_frames - 1::chunk_frames] = True   # pair f compares frames f and f+1
  if boundary.any() and (~boundary).any():
    ratio = lambda t: t[:, boundary].mean(axis=1) / np.maximum(t[:, ~boundary].mean(axis=1), 1e-12)
    out["boundary_jump"] = ratio(m) / np.maximum(ratio(m_ref), 1e-12)
  return out


def relative_attention_error(l1: np.ndarray, teacher_abs: np.ndarray) -> np.ndarray:
  """Per block: mean |softmax - hybrid| / mean |softmax| (the stage-1 held-out report's measure).
  ``l1`` and ``teacher_abs`` are [L, B] per-sample means (``distill_forward``'s statistics)."""
  return np.asarray(l1).mean(axis=1) / np.maximum(np.asarray(teacher_abs).mean(axis=1), 1e-30)


def _checked(x, ref) -> tuple[np.ndarray, np.ndarray]:
  x, ref = np.asarray(x), np.asarray(ref)
  if x.shape != ref.shape:
    raise ValueError(f"shapes differ: {x.shape} vs reference {ref.shape}")
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f"need a leading batch axis; got shape {x.shape}")
  return x, ref
