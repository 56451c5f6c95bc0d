"""The ladder's metrics on hand-made inputs whose values are known without the code under test."""

import math

import numpy as np
import pytest

from rehyat_jax.evaluation import attention_distance, metrics


def test_psnr_of_a_constant_error():
  ref = np.zeros((2, 3, 4, 8, 8), np.float32)
  x = ref + 0.1                                     # MSE 0.01 everywhere
  np.testing.assert_allclose(metrics.psnr(x, ref, data_range=2.0), [10 * math.log10(400.0)] * 2, rtol=1e-6)
  np.testing.assert_allclose(metrics.psnr(x, ref, data_range=1.0), [20.0] * 2, rtol=1e-6)


def test_psnr_is_infinite_for_identical_samples_and_per_sample():
  ref = np.random.default_rng(0).standard_normal((2, 1, 2, 8, 8))
  x = ref.copy()
  x[1] += 0.5                                       # only the second sample differs: MSE 0.25
  out = metrics.psnr(x, ref, data_range=1.0)
  assert math.isinf(out[0])
  np.testing.assert_allclose(out[1], 10 * math.log10(4.0), rtol=1e-6)


def test_ssim_of_constant_frames_is_the_luminance_term():
  # Zero variances and covariance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), with C1 = (0.01 * range)^2.
  a, b, data_range = 0.5, 0.25, 2.0
  c1 = (0.01 * data_range) ** 2
  x = np.full((1, 3, 2, 12, 12), a)
  ref = np.full((1, 3, 2, 12, 12), b)
  np.testing.assert_allclose(metrics.ssim(x, ref, data_range), [(2 * a * b + c1) / (a * a + b * b + c1)], rtol=1e-9)


def test_ssim_is_one_for_identical_and_falls_with_noise():
  rng = np.random.default_rng(1)
  ref = rng.uniform(-1, 1, (2, 3, 2, 16, 16))
  np.testing.assert_allclose(metrics.ssim(ref, ref, 2.0), [1.0, 1.0], rtol=1e-9)
  noise = rng.standard_normal(ref.shape)
  small, large = metrics.ssim(ref + 0.1 * noise, ref, 2.0), metrics.ssim(ref + 0.5 * noise, ref, 2.0)
  assert (small < 1.0).all() and (large < small).all() and (large < 0.6).all()


def test_ssim_of_an_offset_is_only_the_luminance_loss():
  # x = ref + c: variances and covariance equal, so only the mean term (2 m (m + c) + C1) / (m^2 + (m + c)^2 + C1)
  # changes; on a constant-mean reference that is a closed form.
  c1 = (0.01 * 2.0) ** 2
  ref = np.zeros((1, 1, 1, 9, 9))
  ref[..., ::2, :] = 0.2                             # stripes: local means vary, so only check the bound
  out = metrics.ssim(ref + 0.3, ref, 2.0)[0]
  lower = min((2 * m * (m + 0.3) + c1) / (m * m + (m + 0.3) ** 2 + c1) for m in np.linspace(0.0, 0.2, 21))
  assert lower - 1e-9 <= out < 1.0


def test_ssim_rejects_frames_smaller_than_its_window():
  with pytest.raises(ValueError, match="at least 7x7"):
    metrics.ssim(np.zeros((1, 1, 1, 5, 5)), np.zeros((1, 1, 1, 5, 5)), 1.0)


def test_relative_mse_and_shape_check():
  ref = np.ones((1, 4))
  np.testing.assert_allclose(metrics.relative_mse(np.zeros((1, 4)), ref), [1.0])
  np.testing.assert_allclose(metrics.relative_mse(np.full((1, 4), 1.5), ref), [0.25])
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.relative_mse(np.zeros((1, 3)), ref)


def ramp(diffs):
  """[1, 1, F, 2, 2] video whose consecutive frames differ by ``diffs`` everywhere."""
  values = np.concatenate([[0.0], np.cumsum(diffs)])
  return np.broadcast_to(values[None, None, :, None, None], (1, 1, len(values), 2, 2)).copy()


def test_frame_differences_of_a_ramp():
  np.testing.assert_allclose(metrics.frame_differences(ramp([0.1, 0.2, 0.3])), [[0.1, 0.2, 0.3]])


def test_temporal_consistency_sees_seams_at_chunk_boundaries():
  ref = ramp([1.0] * 6)                             # steady motion
  x = ramp([1, 1, 4, 1, 1, 4])                      # jumps across the chunk boundaries of Tc = 3 (pairs 2 and 5)
  out = metrics.temporal_consistency(x, ref, chunk_frames=3)
  np.testing.assert_allclose(out["boundary_jump"], [4.0])
  np.testing.assert_allclose(out["motion_ratio"], [2.0])          # (4 * 1 + 2 * 4) / 6 over 1
  np.testing.assert_allclose(out["motion_error"], [1.0])          # (2 * 3) / 6 over 1
  same = metrics.temporal_consistency(ref, ref, chunk_frames=3)
  np.testing.assert_allclose([same["boundary_jump"][0], same["motion_ratio"][0], same["motion_error"][0]], [1, 1, 0])


def test_relative_attention_error_per_block():
  l1 = np.array([[1.0, 3.0], [0.5, 0.5]])           # [L=2, B=2]
  scale = np.array([[4.0, 4.0], [1.0, 1.0]])
  np.testing.assert_allclose(metrics.relative_attention_error(l1, scale), [0.5, 0.5])


def test_distance_histogram_of_hand_made_masses():
  np.testing.assert_allclose(attention_distance.distance_histogram(np.eye(4)), [1, 0, 0, 0])
  # Uniform over 3 frames: d=0 once per query; d=1 for 1, 2, 1 keys; d=2 for 1, 0, 1 keys; each worth 1/3.
  np.testing.assert_allclose(attention_distance.uniform_histogram(3), [1 / 3, 4 / 9, 2 / 9])
  previous = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])   # frames 1, 2 look one back, frame 0 at itself
  np.testing.assert_allclose(attention_distance.distance_histogram(previous), [1 / 3, 2 / 3, 0])
  summary = attention_distance.summarise(attention_distance.distance_histogram(np.eye(6))[None, None], 2, 1)
  assert summary["same_frame"][0, 0] == 1.0 and summary["beyond_window"][0, 0] == 0.0


def test_ssim_matches_scikit_image():
  # The reference implementation of the recipe metrics.ssim follows (Gaussian weights, sigma 1.5, sample
  # covariances), per 2-D frame, with the same 7-pixel window and data range.
  from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  ref = rng.uniform(-1, 1, (2, 3, 4, 16, 16))
  x = np.clip(ref + 0.3 * rng.standard_normal(ref.shape), -1, 1)
  ours = metrics.ssim(x, ref, 2.0)
  theirs = [np.mean([structural_similarity(x[b, c, f], ref[b, c, f], data_range=2.0, win_size=7, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=True)
                     for c in range(3) for f in range(4)]) for b in range(2)]
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
