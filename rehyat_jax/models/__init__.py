"""Model definitions: the Wan2.1 text-to-video DiT (Flax NNX), its configs and building blocks."""
