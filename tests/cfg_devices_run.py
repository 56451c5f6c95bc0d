"""Child process of test_cfg_devices.py (2 simulated CPU devices). Prints one JSON line: per case, the largest
relative difference between the sampler with the CFG branches on two devices and on one, and the batch sizes of
the DiT's token activations [B, tokens, dim] in each compiled program (1 on each device when the branches are split)."""

import json
import re

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.core import prng
from rehyat_jax.inference.sampler import make_sampler, make_schedule
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.models.wan import RuntimeConfig, WanDiT

LATENT = (5, 4, 6)           # frames, height, width: 6 tokens per frame after 2x2 patches
# Token counts of the DiT's activations [B, T, dim]: the whole clip (30), a recurrent chunk (2 frames, 12), a chunk
# with its overlap frame (18); the text context has WAN_TINY.text_len = 12 rows. No weight has these shapes.
TOKEN_COUNTS = (30, 12, 18)


def token_batches(hlo: str, dim: int) -> list[int]:
  counts = "|".join(map(str, TOKEN_COUNTS))
  return sorted({int(b) for b in re.findall(r"(?:f32|bf16)\[(\d+),(?:%s),%d\]" % (counts, dim), hlo)})


def main():
  cfg = WAN_TINY
  noise = prng.normal(jax.random.key(0), (1, cfg.in_dim, *LATENT))
  text = prng.normal(jax.random.key(1), (1, cfg.text_len, cfg.text_dim))
  negative = prng.normal(jax.random.key(2), (1, cfg.text_len, cfg.text_dim))
  schedule = make_schedule("unipc", 3, 3.0)
  student = RehyatConfig(chunk_frames=2, overlap_frames=1, causal=True,
                         feature_map=FeatureMapConfig(hidden=8, feature_dim=4, init_scale=0.3))
  cases = {"teacher, parallel forward": (None, "parallel"), "student, recurrent forward": (student, "recurrent")}
  out = {"devices": len(jax.devices()), "cases": {}}
  for name, (rehyat, forward) in cases.items():
    dit = WanDiT(cfg, RuntimeConfig(), rehyat, rngs=nnx.Rngs(0))
    one, two = (make_sampler(dit, schedule, solver="unipc", guidance=5.0, forward=forward, cfg_devices=n)
                for n in (1, 2))
    a, b = one(noise, text, negative), two(noise, text, negative)
    out["cases"][name] = {
        "relative_difference": float(jnp.abs(a - b).max() / jnp.abs(a).max()),
        "finite": bool(jnp.isfinite(b).all()),
        "token_batches_one_device": token_batches(one.lower(noise, text, negative).compile().as_text(), cfg.dim),
        "token_batches_two_devices": token_batches(two.lower(noise, text, negative).compile().as_text(), cfg.dim),
    }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
