"""Classifier-free guidance and Wan2.1's text-to-video sampling defaults.

Wan runs the DiT twice per step at the same timestep, once on the prompt and once on the negative
prompt, and extrapolates from the negative towards the prompt (reference doc §3.3).
"""

from __future__ import annotations

import jax

# `wan/configs/shared_config.py` sample_neg_prompt: used when the negative prompt is empty.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，"
    "整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

# The English rendering used in diffusers' Wan docs and maxdiffusion.
WAN_NEGATIVE_PROMPT_EN = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
    "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
    "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
    "fused fingers, still picture, messy background, three legs, many people in the background, "
    "walking backwards")

# Wan2.1 `generate.py` / `WanT2V.generate` defaults for T2V (both sizes, both models): UniPC.
WAN_T2V_SAMPLING_STEPS = 50
WAN_T2V_GUIDANCE_SCALE = 5.0
WAN_T2V_SHIFT = 5.0

# The Wan2.1 README's recommendation for T2V-1.3B at 480p (`--sample_guide_scale 6`,
# `--sample_shift` 8 to 12; its example uses 8). diffusers' Wan configs instead ship
# flow_shift=3.0 for 480p and 5.0 for 720p with guidance 5.0.
WAN_T2V_1_3B_GUIDANCE_SCALE = 6.0
WAN_T2V_1_3B_SHIFT_RANGE = (8.0, 12.0)


def cfg_combine(cond: jax.Array, uncond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance: ``uncond + scale * (cond - uncond)``.

  ``scale = 1`` gives the conditional prediction, 0 the unconditional; the operation order is
  the original's and diffusers' so guided flows match theirs bit for bit.
  """
  return uncond + scale * (cond - uncond)
