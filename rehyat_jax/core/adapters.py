"""``AdapterParam``: every trainable parameter a student adds to its teacher.

A converted Wan checkpoint holds the teacher's weights; a student adds small modules on top
(ReHyAt's feature maps phi_q, phi_k; a LoRA would add low-rank factors). Each such parameter is an
``AdapterParam`` subclass, so loaders ("everything but adapters comes from the teacher"),
optimisers ("train only adapters") and exporters ("save only adapters") select them by type
without naming any one kind.
"""

from __future__ import annotations

from flax import nnx


class AdapterParam(nnx.Param):
  """A parameter that is not part of the teacher checkpoint (subclass it per adapter kind)."""


# The teacher's parameters: every Param that is not an adapter.
TEACHER_PARAMS = nnx.All(nnx.Param, nnx.Not(AdapterParam))
