"""The README's main job runs end to end (on smaller inputs, 40 stage-1 and 2 stage-2 steps): part 1's student forms agree on
the checkpoint it converted; part 2 distils the shipped toy teacher through the training command's code, runs the
evaluation ladder, ends with the picture and the table, and keeps its outputs in the work directory."""

import json
import logging

import jax
import numpy as np
from flax import nnx

from rehyat_jax import demo
from rehyat_jax.convert import load_pretrained
from rehyat_jax.convert.student import check_teacher, read_student_config
from rehyat_jax.toy import SHIPPED_TEACHER


def test_demo_distils_the_shipped_teacher_and_keeps_its_outputs(tmp_path, capsys, caplog):
  work = tmp_path / "demo"
  (work / "stage1").mkdir(parents=True)
  (work / "stage1" / "stale.txt").write_text("from an earlier run")  # the demo's folders start empty
  assert demo.main(["--frames", "5", "--height", "4", "--width", "6", "--workdir", str(work),
                    "--stage1-steps", "40", "--stage2-steps", "2", "--train-clips", "32", "--eval-clips", "2",
                    "--sample-steps", "2"]) == 0
  captured = capsys.readouterr()
  out = captured.out
  assert "weights are RANDOM" in out
  assert "student recurrent_forward (whole DiT" in out and "ERROR" not in out
  assert "next issue" not in out  # no internal language
  assert "WARNING" not in out + captured.err
  # absl / TFDS notes go through Python logging (pytest captures them there): the demo silences them.
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

  # Kept, and said so at the end, with the picture.
  for kept in ("converted/config.json", "stage1/student_export/student.json", "stage1/metrics.jsonl",
               "stage1/per_block_error.png", "stage2/metrics.jsonl", "eval/ladder.md", "eval/strip.png"):
    assert (work / kept).is_file(), kept
  assert (work / "stage2" / "checkpoints").is_dir() and not (work / "stage1" / "stale.txt").exists()
  assert f"kept in {work}/" in out and f"PICTURE: {work / 'eval' / 'strip.png'}" in out

  # Part 2 distilled the shipped teacher (not part 1's random model): stage 1's export names it, and stage 2
  # trained exactly its parameters (teacher + phi) through the user's command.
  export = work / "stage1" / "student_export"
  check_teacher(export, load_pretrained(SHIPPED_TEACHER))
  student = load_pretrained(SHIPPED_TEACHER, rehyat=read_student_config(export))
  params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(nnx.state(student, nnx.Param)))
  assert f"stage finetune: {params:,} trainable parameters" in out
  assert f"--config.workdir={work / 'stage1'}" in out and "configs/demo.py:finetune" in out
  assert "compiling the train step" in out

  # The ladder's rows are the ones the summary names, and its table was printed.
  ladder = json.loads((work / "eval" / "ladder.json").read_text())
  names = {rung["name"] for rung in ladder["rungs"]}
  assert {"teacher", "stage 1", "stage 1 phi=0", "stage 1+2"} <= names
  assert "| rung |" in out and "sample PSNR vs the teacher's sample" in out


def test_the_shipped_teacher_is_the_toy_recipe():
  recipe = json.loads((SHIPPED_TEACHER / "conversion.json").read_text())
  assert "configs/toy_teacher.py" in recipe["recipe"]
  from configs import toy_teacher
  shipped = json.loads((SHIPPED_TEACHER / "config.json").read_text())
  for field, value in toy_teacher.TOY_ARCHITECTURE.items():  # the architecture the recipe trains, field by field
    assert shipped[field] == (list(value) if isinstance(value, tuple) else value), field
