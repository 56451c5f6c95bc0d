"""The feature-map registry: ``FeatureMapConfig`` (a kind and its options), ``FEATURE_MAPS``,
``register_feature_map``, ``build_feature_map`` and ``PhiParam`` (docs/method.md §3).

A feature map kind is one module file (``mlp_power.py`` is the model) that defines a frozen
options dataclass and an ``nnx.Module`` and registers them here. The options dataclass
validates its own values in ``__post_init__`` (ValueError naming the option) and reports the
map's output dim D' as an ``output_dim`` property; the module is built as
``module_type(config, num_heads, head_dim, rngs=rngs)`` and called as ``module(x, backend=...)``
(``FEATURE_MAP_BACKENDS``; a kind without a kernel raises ValueError for anything but 'xla'); it maps
[B, N, H, head_dim] to [B, N, H, config.output_dim] (float32 for float32 input; for bf16 input, bf16 or float32), its
parameters being ``PhiParam``s. The forms accept either dtype: ``numerics.feature_einsum``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from flax import nnx

from rehyat_jax.core.adapters import AdapterParam

DEFAULT_KIND = "mlp_power"
# How a map runs (``RuntimeConfig.feature_map_backend``): plain XLA, or a kind's fused kernel.
FEATURE_MAP_BACKENDS = ("xla", "pallas")


class PhiParam(AdapterParam):
  """Parameter of a ReHyAt feature map (the only thing stage-1 distillation trains).

  Every kind's parameters are ``PhiParam``s, so an optimiser or gradient filter
  (``wrt=PhiParam``) selects exactly the feature maps whatever their kind.
  """


@dataclasses.dataclass(frozen=True)
class FeatureMapEntry:
  """One registered kind: its options dataclass, its module class and a one-line summary."""

  name: str
  options_type: type
  module_type: type[nnx.Module]
  summary: str


# name -> entry, in registration order.
FEATURE_MAPS: dict[str, FeatureMapEntry] = {}


def register_feature_map(name: str, *, options: type, summary: str) -> Callable[[type], type]:
  """Class decorator registering an ``nnx.Module`` as feature map kind ``name``.

  ``options``: a frozen dataclass of the kind's hyper-parameters (all with defaults, validated in
  ``__post_init__``) with an ``output_dim`` property. ValueError for a name registered twice.
  """
  if not dataclasses.is_dataclass(options) or not options.__dataclass_params__.frozen:
    raise TypeError(f"feature map {name!r}: options must be a frozen dataclass, got {options!r}")
  if not isinstance(getattr(options, "output_dim", None), property):
    raise TypeError(f"feature map {name!r}: options {options.__name__} needs an output_dim property")
  if "kind" in {f.name for f in dataclasses.fields(options)}:
    raise TypeError(f"feature map {name!r}: 'kind' is reserved and cannot be an option")

  def register(module_type: type) -> type:
    if name in FEATURE_MAPS:
      raise ValueError(f"feature map kind {name!r} is already registered")
    FEATURE_MAPS[name] = FeatureMapEntry(name, options, module_type, summary)
    return module_type

  return register


def feature_map_entry(kind: str) -> FeatureMapEntry:
  """The registered entry of ``kind``; ValueError listing the registered kinds otherwise."""
  if kind not in FEATURE_MAPS:
    raise ValueError(f"unknown feature map kind {kind!r}; registered kinds: {sorted(FEATURE_MAPS)}")
  return FEATURE_MAPS[kind]


@dataclasses.dataclass(frozen=True, init=False)
class FeatureMapConfig:
  """A feature map: its ``kind`` (a ``FEATURE_MAPS`` name) and that kind's validated ``options``.

  ``FeatureMapConfig(kind="mlp_power", **options)``; options read as attributes
  (``cfg.degree``), ``cfg.output_dim`` is the map's D'. Frozen, hashable and comparable (it is a
  static attribute of NNX modules and part of ``RehyatConfig``). ``dataclasses.replace(cfg,
  hidden=64)`` changes one option and keeps the others. ``to_dict`` / ``from_dict`` give the
  JSON form {"kind": ..., **options}.
  """

  kind: str
  options: Any

  def __init__(self, kind: str = DEFAULT_KIND, options: Any = None, **option_values: Any):
    # ``options`` (an options instance or mapping) is what dataclasses.replace passes back in;
    # explicit keyword values override it.
    entry = feature_map_entry(kind)
    values: dict[str, Any] = {}
    if options is not None:
      values.update(options if isinstance(options, Mapping) else
                    {f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
    values.update(option_values)
    known = [f.name for f in dataclasses.fields(entry.options_type)]
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"unknown option(s) {unknown} for feature map kind {kind!r}; its options are {known}")
    object.__setattr__(self, "kind", kind)
    object.__setattr__(self, "options", entry.options_type(**values))

  def __getattr__(self, name: str) -> Any:
    # Only reached when normal lookup fails: option names read through to the options.
    options = self.__dict__.get("options")
    if options is not None and name in {f.name for f in dataclasses.fields(options)}:
      return getattr(options, name)
    raise AttributeError(f"{type(self).__name__} of kind {self.__dict__.get('kind')!r} has no "
                         f"attribute or option {name!r}")

  @property
  def output_dim(self) -> int:
    """D', the feature dim the map produces (reported by the kind's options)."""
    return self.options.output_dim

  def to_dict(self) -> dict[str, Any]:
    """{"kind": ..., **options}, JSON-able; ``from_dict`` inverts it."""
    return {"kind": self.kind, **dataclasses.asdict(self.options)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FeatureMapConfig":
    """Inverse of ``to_dict``. A missing "kind" means the default kind (as in the constructor);
    ValueError naming an unknown kind (with the registered ones) or an unknown option."""
    values = dict(d)
    kind = values.pop("kind", DEFAULT_KIND)
    if "options" in values:
      raise ValueError(f"unknown option(s) ['options'] for feature map kind {kind!r}")
    return cls(kind, **values)


def build_feature_map(config: FeatureMapConfig, num_heads: int, head_dim: int, *,
                      rngs: nnx.Rngs) -> nnx.Module:
  """The ``config.kind`` module: [B, N, num_heads, head_dim] -> [B, N, num_heads, config.output_dim]."""
  if not isinstance(config, FeatureMapConfig):
    raise TypeError(f"build_feature_map needs a FeatureMapConfig, got {type(config).__name__}")
  return feature_map_entry(config.kind).module_type(config, num_heads, head_dim, rngs=rngs)
