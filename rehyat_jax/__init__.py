"""rehyat-jax: Wan2.1 video DiT and ReHyAt recurrent hybrid attention in JAX / Flax NNX.

Subpackages: ``models`` (the Wan2.1 DiT and its building blocks), ``attention`` (softmax backends
and the ReHyAt hybrid in its reference / parallel / scan forms), ``convert`` (PyTorch checkpoint
readers, the key table, the Orbax writer and loader), ``train``, ``data`` and ``sampling``.
"""

__version__ = "0.1.0"
