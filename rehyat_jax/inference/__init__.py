"""Inference: Wan2.1 text-to-video with the softmax teacher or a ReHyAt student export.

  pipeline.py    ``Pipeline`` (DiT, umT5, tokenizer, VAE), ``load_pipeline`` (teacher, or a student from
                 its export), ``GenerationError`` and every cheap check of a request: prompts, video
                 shape, the DiT forward ('parallel' | 'recurrent'), the parts fitting each other
  sampler.py     ``make_schedule``, ``make_text_encoder``, ``text_encoder_on_device`` (umT5's weights on
                 the accelerator only while prompts are encoded), ``make_sampler`` (the whole guided
                 sampling loop as one compiled program), ``latent_shape``
  video_io.py    ``to_uint8_frames``, ``write_video`` (streamed VAE decode into an mp4), ``video_name``
                 (VBench style), ``check_video_writer``
  generation.py  ``generate`` (prompts -> mp4s + latents), ``VideoResult``, peak-memory helpers, ``summary``
  cli.py         the ``python -m rehyat_jax.generate`` command: parser, ``validate_args``, ``main``

This package imports nothing from ``train`` or ``data``, and no package imports ``cli``: the dataset
writers (``data/latent_generation``) and tools use ``sampler`` / ``pipeline`` directly.
"""

from rehyat_jax.inference.generation import VideoResult, generate, peak_gib, peak_memory, summary
from rehyat_jax.inference.pipeline import (FORWARDS, GenerationError, Pipeline, check_compatible, check_forward,
                                           check_pipeline, check_prompts, check_video_shape, load_pipeline,
                                           read_prompts_file)
from rehyat_jax.inference.sampler import (latent_shape, make_sampler, make_schedule, make_text_encoder,
                                         text_encoder_on_device)
from rehyat_jax.inference.video_io import check_video_writer, to_uint8_frames, video_name, write_video

__all__ = [
    "FORWARDS", "GenerationError", "Pipeline", "VideoResult", "check_compatible", "check_forward",
    "check_pipeline", "check_prompts", "check_video_shape", "check_video_writer", "generate", "latent_shape",
    "load_pipeline", "make_sampler", "make_schedule", "make_text_encoder", "peak_gib", "peak_memory",
    "read_prompts_file", "summary", "text_encoder_on_device", "to_uint8_frames", "video_name", "write_video",
]
