"""``python -m rehyat_jax.train``: the command line of a training run (help, config loading, one-line errors).

  python -m rehyat_jax.train --config configs/<job>.py[:ARG] [--config.FIELD=VALUE ...]

``parse_config`` turns the command line into the locked ConfigDict (the demo runs its stages through it, so
they are the commands a user types); ``main`` adds the run. Everything that can be wrong with the command line
or the config (an unknown file, a mistyped field, a value of the wrong type) is one line on stderr and exit
status 2 before JAX is imported; a ``ConfigError`` of ``config_checks`` is one line too, before anything
compiles.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Sequence

PROG = "python -m rehyat_jax.train"
USAGE = f"usage: {PROG} --config CONFIG_FILE[:ARG] [--config.FIELD=VALUE ...]   (--help: configs and fields)"
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")
# The repository's configs/ (this file is rehyat_jax/train/cli.py); a configs/ in the working directory wins.
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class UsageError(Exception):
  """A command line that cannot run; the message is one line naming the argument or field."""


def configs_dir() -> Path | None:
  for folder in (Path.cwd() / "configs", REPO_CONFIGS):
    if folder.is_dir():
      return folder
  return None


def config_summaries(folder: Path) -> list[tuple[str, str]]:
  """(path as typed from the working directory, first line of its docstring) of every config file but
  common.py (read with ``ast``: nothing is imported)."""
  here = folder.resolve() == (Path.cwd() / "configs").resolve()
  rows = []
  for path in sorted(folder.glob("*.py")):
    if path.name in ("__init__.py", "common.py"):
      continue
    try:
      doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
      doc = ""
    rows.append((f"configs/{path.name}" if here else str(path),
                 doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"))
  return rows


def help_text() -> str:
  folder = configs_dir()
  if folder is None:
    listing = "  (no configs/ folder found: run from the repository root)"
  else:
    rows = config_summaries(folder)
    width = max((len(name) for name, _ in rows), default=0)
    listing = "\n".join(f"  {name:<{width}}  {doc}" for name, doc in rows)
  return f"""{USAGE.split('   ')[0]}

Trains one stage of a ReHyAt student as a config file describes it: stage 1 ('distill') trains only the
feature maps phi against the softmax teacher, stage 2 ('finetune') finetunes the student with Wan's
flow-matching loss. Checkpoints, metrics.jsonl and TensorBoard events go to the config's workdir; a run
resumes from its latest checkpoint there.

Configs (configs/*.py, with the first line of each file's docstring):
{listing}

Arguments:
  --config FILE.py[:ARG]  the config file (a path from the working directory). Text after the colon is passed
                          to the file's get_config(ARG); what it means is in the file's docstring, e.g.
                            configs/tiny.py:finetune              the tiny job's stage 2
                            configs/finetune_wan_1_3b.py:0,3,5    stage 2 converting blocks 0, 3 and 5
  --config.FIELD=VALUE    sets one field of the config, at any depth (after --config), e.g.
                            --config.train.steps=3  --config.workdir=runs/try  --config.rehyat.chunk_frames=2
                            --config.model.checkpoint=ckpt/wan2.1-t2v-1.3b  --config.data.latent_shape='(5,8,12)'
  -h, --help              this help

Every field and what it means: configs/common.py (its docstring is the field reference; the job files
change only what their recipe fixes). A mistyped field or an invalid value stops the run before anything
compiles, with one line naming the field.

Output: one progress line per train.log_every steps, e.g.
  step 50/300 loss 0.01492 11.46 steps/s 9906 tok/s ETA 22 s device-h 0.0012
  = step / total; the loss of that step's batch; speed in steps and latent tokens per second, measured after
  the first step (which waits for compilation, announced as "compiling ..."); ETA = time left at that speed;
  device-h = device-hours used so far (wall time x devices); MFU (model FLOP utilisation) on known
  accelerators. The same numbers go to <workdir>/metrics.jsonl and TensorBoard events.

Examples:
  {PROG} --config configs/tiny.py                                  # stage 1 on CPU, random tiny teacher
  {PROG} --config configs/tiny.py:finetune --config.train.steps=20 # stage 2
  {PROG} --config configs/distill_wan_1_3b.py --config.model.checkpoint=ckpt/wan2.1-t2v-1.3b

Exit status: 0 when the run finished (or was stopped by SIGTERM after saving), 2 for a bad command line or
config, 1 when training failed (e.g. the loss stayed non-finite)."""


def _split_config_spec(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """(the value of --config (the last one given) or None, the other arguments)."""
  spec, rest, skip = None, [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
    elif arg in ("--config", "-config"):
      spec, skip = (argv[i + 1] if i + 1 < len(argv) else ""), True
    elif re.match(r"^--?config=", arg):
      spec = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  return spec, rest


def _import_root_on_path(config_file: Path) -> None:
  """Job files import their shared defaults as ``from configs import common``: the folder above the config's
  folder must be importable, from whatever directory the command runs."""
  root = str(config_file.resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)


def load_config(spec: str):
  """The ConfigDict that ``--config spec`` describes (unlocked), or UsageError."""
  path = spec.split(":", 1)[0]
  if not path:
    raise UsageError("--config needs a config file, e.g. --config configs/tiny.py (--help lists them)")
  config_file = Path(path)
  if not config_file.is_file():
    folder = configs_dir()
    names = [name for name, _ in config_summaries(folder)] if folder else []
    near = difflib.get_close_matches(path, names, n=1)
    hint = f"; did you mean {near[0]}?" if near else (f"; the configs are {', '.join(names)}" if names else "")
    raise UsageError(f"--config {spec}: no such file{hint}")
  _import_root_on_path(config_file)
  # Loaded as ml_collections loads it (a module from the file, get_config(ARG) when ':ARG' is given).
  module_spec = importlib.util.spec_from_file_location("rehyat_train_config", config_file)
  try:
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(*spec.split(":", 1)[1:])
  except Exception as e:  # pylint: disable=broad-except  # the config file's own error, as one line
    raise UsageError(f"--config {spec}: {type(e).__name__}: {_last_line(e)}") from None
  if not hasattr(config, "to_dict"):
    raise UsageError(f"--config {spec}: get_config() did not return a ConfigDict")
  return config


def _last_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def check_override_names(config, argv: Sequence[str]) -> None:
  """Every --config.a.b[=v] names a field of ``config``; else UsageError with the nearest valid name."""
  for arg in argv:
    match = re.match(r"^--?(?:no)?config\.([^=]*)", arg)
    if not match:
      continue
    node, walked = config, "config"
    for part in match.group(1).split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        near = difflib.get_close_matches(part, keys, n=1)
        hint = (f"did you mean --{walked}.{near[0]}?" if near else
                f"its fields are {', '.join(sorted(keys))}" if keys else f"{walked} is a value, not a group")
        raise UsageError(f"--config.{match.group(1)}: {walked} has no field {part!r}; {hint} "
                         "(configs/common.py documents every field)")
      node, walked = node[part], f"{walked}.{part}"


def parse_config(argv: Sequence[str]):
  """Command-line arguments (without the program name) -> the locked ConfigDict with every override applied.

  Raises UsageError (one line) for anything wrong with them; ``--help`` is main's.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  spec, overrides = _split_config_spec(list(argv))
  if spec is None:
    raise UsageError("--config is required, e.g. --config configs/tiny.py (--help lists the configs)")
  config = load_config(spec)
  check_override_names(config, overrides)
  # The file is loaded here (above) and handed over as a ConfigDict flag, whose parser applies the overrides with
  # ml_collections' own value parsing. A FlagValues of its own per call: the flag defines one flag per override
  # while it parses, so the global FLAGS could parse only one command line per process (the demo parses two).
  flag_values = flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_dict("config", config, "training config", flag_values=flag_values,
                                             lock_config=True, sys_argv=[PROG, *overrides])
    rest = flag_values([PROG, *overrides], known_only=True)
  except Exception as e:  # pylint: disable=broad-except  # absl and ml_collections raise several types for bad values
    raise UsageError(_last_line(e)) from None
  unknown = rest[1:]
  if unknown:
    raise UsageError(f"unknown argument {unknown[0]!r}: only --config and --config.FIELD=VALUE are accepted")
  return holder.value


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(arg in HELP_FLAGS for arg in argv):
    print(help_text())
    return 0
  if not argv:
    print(USAGE, file=sys.stderr)
    return 2
  try:
    cfg = parse_config(argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Imported after the command line is checked: a typo is reported in a second, not after JAX starts.
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from rehyat_jax.train.errors import ConfigError, NonFiniteTrainingError  # pylint: disable=g-import-not-at-top
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl logging would otherwise warn that flags were never parsed
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint file at INFO
  try:
    run(cfg)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except NonFiniteTrainingError as e:  # its message says what was kept and what to change
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
