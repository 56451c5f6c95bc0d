"""WanVAE against diffusers' ``AutoencoderKLWan``: encode / decode parity through the real converter, latent
normalisation, streaming decode, decode memory and input validation.

Reference: the tiny VAE of diffusers' Wan pipeline tests (base_dim 3) with seeded random weights, fp32 on CPU.
Error is max |ours - torch| / max |torch|. Videos stay tiny (16 x 24) because XLA compiles one program per
frame count.
"""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from diffusers import AutoencoderKLWan

from rehyat_jax.convert.wan_vae import convert_wan_vae, load_wan_vae
from rehyat_jax.models.wan_vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAE, WanVAEConfig

TOLERANCE = 1e-4
HEIGHT, WIDTH = 16, 24
BATCH = 2
ENCODE_MOMENTS = jax.jit(lambda vae, videos: vae.encode_moments(videos))
ENCODE = jax.jit(lambda vae, videos: vae.encode(videos))
DECODE = jax.jit(lambda vae, latents: vae.decode(latents))


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def build_tiny_diffusers_vae(seed: int = 0) -> AutoencoderKLWan:
  """diffusers' test VAE; torch's init gives random convs and biases, the RMS-norm gammas are randomised too."""
  torch.manual_seed(seed)
  model = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("gamma"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
  return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[AutoencoderKLWan, WanVAE]:
  """(diffusers model, the WanVAE converted from its save_pretrained folder)."""
  model = build_tiny_diffusers_vae(seed=0)
  folder = tmp_path_factory.mktemp("diffusers_vae")
  model.save_pretrained(folder)
  converted = tmp_path_factory.mktemp("converted") / "vae"
  cfg = convert_wan_vae(folder, converted, progress=None)
  assert cfg == WanVAEConfig.tiny()
  return model, load_wan_vae(converted)


def random_videos(frames: int, seed: int = 0) -> torch.Tensor:
  return torch.rand(BATCH, 3, frames, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_encode_decode_match_diffusers(tiny, frames):
  model, vae = tiny
  videos = random_videos(frames)
  with torch.no_grad():
    posterior = model.encode(videos).latent_dist
  mean, logvar = ENCODE_MOMENTS(vae, videos.numpy())
  latent_frames = 1 + (frames - 1) // 4
  assert mean.shape == (BATCH, 16, latent_frames, HEIGHT // 8, WIDTH // 8)

  latents = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    ref_video = model.decode(latents).sample
  # decode takes normalised latents; normalising first makes it decode exactly diffusers' latents.
  video = DECODE(vae, vae.normalize_latents(latents.numpy()))
  assert video.shape == (BATCH, 3, frames, HEIGHT, WIDTH)
  assert float(np.abs(ref_video.numpy()).max()) < 1.0  # the clamp does not hide differences

  errors = {"mean": rel_err(mean, posterior.mean), "logvar": rel_err(logvar, posterior.logvar),
            "decode": rel_err(video, ref_video)}
  print(f"frames={frames}: " + ", ".join(f"{name} {err:.2e}" for name, err in errors.items()))
  assert max(errors.values()) <= TOLERANCE, errors


def test_latents_are_normalised_with_the_published_statistics(tiny):
  model, vae = tiny
  # diffusers' defaults (which the tiny model keeps) are the published statistics.
  assert tuple(model.config.latents_mean) == WAN21_LATENTS_MEAN == WanVAEConfig().latents_mean
  assert tuple(model.config.latents_std) == WAN21_LATENTS_STD == WanVAEConfig().latents_std
  mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
  inv_std = 1.0 / torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)

  videos = random_videos(5, seed=2)
  with torch.no_grad():
    ref_latents = (model.encode(videos).latent_dist.mean - mean) * inv_std  # as Wan's encode
  latents = ENCODE(vae, videos.numpy())
  assert rel_err(latents, ref_latents) <= TOLERANCE

  normalised = torch.randn(BATCH, 16, 2, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    ref_video = model.decode(normalised / inv_std + mean).sample  # as WanPipeline un-normalises
  assert rel_err(DECODE(vae, normalised.numpy()), ref_video) <= TOLERANCE
  np.testing.assert_allclose(vae.denormalize_latents(vae.normalize_latents(latents)), latents, rtol=1e-6,
                             atol=1e-6)


def test_streaming_decode_equals_one_shot(tiny):
  _, vae = tiny
  latents = jax.random.normal(jax.random.key(4), (BATCH, 16, 4, HEIGHT // 8, WIDTH // 8))
  groups = list(vae.decode_stream(latents))
  assert [g.shape[2] for g in groups] == [1, 4, 4, 4]
  streamed = np.concatenate([np.asarray(g) for g in groups], axis=2)
  one_shot = np.asarray(DECODE(vae, latents))
  print(f"stream vs one-shot: max |diff| {np.abs(streamed - one_shot).max():.2e}")
  np.testing.assert_allclose(streamed, one_shot, rtol=0, atol=1e-6)


def test_decode_temporary_memory_does_not_grow_beyond_the_output(tiny):
  _, vae = tiny
  figures = {}
  for latent_frames in (3, 5, 9):
    latents = jax.ShapeDtypeStruct((1, 16, latent_frames, HEIGHT // 8, WIDTH // 8), jnp.float32)
    memory = DECODE.lower(vae, latents).compile().memory_analysis()
    figures[latent_frames] = (memory.temp_size_in_bytes, memory.output_size_in_bytes)
  print("decode: latent frames -> (temp bytes, output bytes):", figures)
  temp_3, out_3 = figures[3]
  for latent_frames in (5, 9):
    temp, out = figures[latent_frames]
    # Growth is at most about one output-sized buffer (the scan's stacked frames before the final transpose);
    # everything a step needs, caches included, is the same for any length.
    assert temp - temp_3 <= 1.5 * (out - out_3), figures


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 4, 16, 16), "4k \\+ 1"),
    ((1, 3, 6, 16, 16), "4k \\+ 1"),
    ((1, 3, 5, 12, 16), "divisible by 8"),
    ((1, 3, 5, 16, 20), "divisible by 8"),
    ((1, 4, 5, 16, 16), "expected videos"),
    ((3, 5, 16, 16), "expected videos"),
])
def test_encode_rejects_bad_videos(tiny, shape, message):
  with pytest.raises(ValueError, match=message):
    tiny[1].encode(jnp.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 8, 2, 2, 2), (1, 16, 0, 2, 2), (16, 2, 2, 2)])
def test_decode_rejects_bad_latents(tiny, shape):
  with pytest.raises(ValueError, match="expected latents"):
    tiny[1].decode(jnp.zeros(shape))
  with pytest.raises(ValueError, match="expected latents"):
    next(tiny[1].decode_stream(jnp.zeros(shape)))
