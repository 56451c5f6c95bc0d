"""Shared fixture of the data tests: one tiny latent dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from rehyat_jax.data.builders import write_latent_dataset
from tiny_data import TINY_SHAPES, tiny_examples


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
  """The directory of ``tiny_examples()`` written as split 'train' in 2 shards (read-only: copy to damage)."""
  return write_latent_dataset(tmp_path_factory.mktemp("tiny"), tiny_examples(), shapes=TINY_SHAPES, num_shards=2)
