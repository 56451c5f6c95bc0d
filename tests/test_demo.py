"""The README's main job runs end to end (on smaller inputs and 2 steps per stage): its student forms agree, part 2
trains the student of the checkpoint part 1 converted through the training command's code, and the outputs are
kept in the work directory."""

import jax
import numpy as np
from flax import nnx

from rehyat_jax import demo
from rehyat_jax.convert import load_pretrained
from rehyat_jax.convert.student import check_teacher, read_student_config


def test_demo_distils_the_model_it_converted_and_keeps_its_outputs(tmp_path, capsys):
  work = tmp_path / "demo"
  (work / "stage1").mkdir(parents=True)
  (work / "stage1" / "stale.txt").write_text("from an earlier run")  # the demo's folders start empty
  assert demo.main(["--frames", "5", "--height", "4", "--width", "6", "--workdir", str(work),
                    "--stage1-steps", "2", "--stage2-steps", "2"]) == 0
  out = capsys.readouterr().out
  assert "weights are RANDOM" in out
  assert "student recurrent_forward (whole DiT" in out and "ERROR" not in out
  assert "next issue" not in out  # no internal language

  # Kept, and said so at the end.
  for kept in ("converted/config.json", "stage1/student_export/student.json", "stage1/metrics.jsonl",
               "stage1/per_block_error.png", "stage2/metrics.jsonl"):
    assert (work / kept).is_file(), kept
  assert (work / "stage2" / "checkpoints").is_dir() and not (work / "stage1" / "stale.txt").exists()
  assert f"kept in {work}/" in out

  # Part 2 trained the converted model (not a preset with fresh weights): stage 1's export names the converted
  # teacher, and stage 2 trained exactly its parameters (teacher + phi) through the user's command.
  export = work / "stage1" / "student_export"
  check_teacher(export, load_pretrained(work / "converted"))
  student = load_pretrained(work / "converted", rehyat=read_student_config(export))
  params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(nnx.state(student, nnx.Param)))
  assert f"stage finetune: {params:,} trainable parameters" in out
  assert f"--config.model.checkpoint={work / 'converted'}" in out and "configs/demo.py:finetune" in out
  assert "compiling the train step" in out

