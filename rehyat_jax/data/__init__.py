"""Data: TFDS array_record builders, Grain pipelines, synthetic sources.

Modules: ``builders`` (the on-disk record format, the two TFDS builders ``WanLatentsDataset`` and
``PromptEmbeddingsDataset``, and the writers: one call per dataset, or shard by shard for multi-host and
resumable tools), ``sources`` (opening a written dataset as a checked random-access source, and
``SyntheticLatentSource``), ``pipeline`` (the Grain training iterator and per-process batch -> global
``jax.Array`` batch), and the logic of the dataset tools: ``prompt_encoding`` (prompts -> umT5 embeddings,
plus the resumable host-sharded shard loop the tools share), ``video_encoding`` (mp4 clips -> VAE latents +
captions), ``latent_generation`` (a teacher samples latents from prompts).
"""

from rehyat_jax.data.builders import (
    LatentShapes,
    PromptEmbeddingsDataset,
    RecordBuilder,
    WanLatentsDataset,
    bf16_bits_to_float32,
    finalize_dataset,
    make_latent_record,
    make_prompt_record,
    shard_path,
    to_bf16_bits,
    write_latent_dataset,
    write_prompt_dataset,
    write_shard,
)
from rehyat_jax.data.pipeline import decode_record, make_train_iterator, to_global_batch
from rehyat_jax.data.sources import (
    CheckedSource,
    DataSourceError,
    SyntheticLatentSource,
    open_latent_source,
    open_prompt_source,
)

__all__ = [
    "CheckedSource",
    "DataSourceError",
    "LatentShapes",
    "PromptEmbeddingsDataset",
    "RecordBuilder",
    "SyntheticLatentSource",
    "WanLatentsDataset",
    "bf16_bits_to_float32",
    "decode_record",
    "finalize_dataset",
    "make_latent_record",
    "make_prompt_record",
    "make_train_iterator",
    "open_latent_source",
    "open_prompt_source",
    "shard_path",
    "to_bf16_bits",
    "to_global_batch",
    "write_latent_dataset",
    "write_prompt_dataset",
    "write_shard",
]
