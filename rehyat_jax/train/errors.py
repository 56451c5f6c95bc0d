"""``ConfigError``: a training config that cannot run (its message names the field);
``NonFiniteTrainingError``: a run that stopped because its loss or gradients stayed non-finite."""


class ConfigError(ValueError):
  """A training config that cannot run; the message names the field."""


class NonFiniteTrainingError(RuntimeError):
  """Training stopped: too many consecutive steps with a non-finite loss or gradient (their updates were
  skipped, so the weights are the last finite ones), or weights that are not finite were about to be saved."""
