"""The package layering of docs/architecture.md, checked on the source: no upward imports.

Each package may import only packages at its own level or below:

  core < attention < models < convert < sampling < inference < data < train < evaluation < toy
    < (demo, generate, evaluate)

and no module but another entry module imports a command-line entry module (``generate``, ``demo``, ``evaluate``,
``train.__main__``, ``train.cli``, ``inference.cli``, ``evaluation.cli``). Imports are read from the AST, including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rehyat_jax"
LAYERS = ("core", "attention", "models", "convert", "sampling", "inference", "data", "train", "evaluation", "toy",
          "demo", "generate", "evaluate")
CLI_MODULES = {"rehyat_jax.generate", "rehyat_jax.demo", "rehyat_jax.evaluate", "rehyat_jax.train.__main__",
               "rehyat_jax.train.cli", "rehyat_jax.inference.cli", "rehyat_jax.evaluation.cli"}


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return {n for n in names if n == "rehyat_jax" or n.startswith("rehyat_jax.")}


def layer_of(module: str) -> int | None:
  parts = module.split(".")
  return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_module_has_a_layer():
  unplaced = sorted({p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES} - set(LAYERS)
                    - {"__init__"})
  assert not unplaced, f"place {unplaced} in LAYERS (and in docs/architecture.md)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports_and_no_cli_imports(path):
  me = module_name(path)
  my_layer = layer_of(me)
  problems = []
  for target in imported_modules(path):
    if target in CLI_MODULES and me not in CLI_MODULES:
      problems.append(f"imports the command-line module {target}")
    layer = layer_of(target)
    if my_layer is not None and layer is not None and layer > my_layer:
      problems.append(f"{LAYERS[my_layer]} imports {target} ({LAYERS[layer]} is above it)")
  assert not problems, f"{me}: " + "; ".join(sorted(set(problems)))


def test_the_checker_sees_an_upward_import(tmp_path):
  fake = tmp_path / "x.py"
  fake.write_text("def f():\n  from rehyat_jax.train.loop import run\n")
  assert "rehyat_jax.train.loop" in imported_modules(fake)
  assert layer_of("rehyat_jax.train.loop") > layer_of("rehyat_jax.attention.hybrid")
