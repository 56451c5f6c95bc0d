"""``ConfigError``: a training config that cannot run (its message names the field)."""


class ConfigError(ValueError):
  """A training config that cannot run; the message names the field."""
