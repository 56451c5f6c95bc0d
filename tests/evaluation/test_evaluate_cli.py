"""``python -m rehyat_jax.evaluate`` end to end on tiny random models: it writes every output, and its rungs
mean what they say (the teacher row is exact, zeroed adapters are chunk-local softmax)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.convert import load_pretrained
from rehyat_jax.convert.student import export_student, teacher_fingerprint
from rehyat_jax.evaluation import cli, ladder
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.toy import export, video

TINY = WanConfig(dim=24, ffn_dim=32, num_heads=2, num_layers=2, patch_size=(1, 4, 4), freq_dim=32, in_dim=3,
                 out_dim=3, text_dim=16, text_len=8)
SPEC = video.ToyVideoSpec(frames=5, height=8, width=8, text_len=8, text_dim=16)
STUDENT = RehyatConfig.from_dict({"chunk_frames": 2, "overlap_frames": 1, "causal": True,
                                  "feature_map": {"kind": "mlp_power", "hidden": 8, "feature_dim": 4,
                                                  "init_scale": 0.5}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("ladder")
  teacher = WanDiT(TINY, RuntimeConfig(), None, rngs=nnx.Rngs(0))
  kernel = teacher.head.head.kernel          # Wan's zero output projection would make every model predict 0
  kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), kernel.shape)
  export.write_dit(teacher, root / "teacher", written_by={"test": True})
  student = load_pretrained(root / "teacher", rehyat=STUDENT, seed=3)
  export_student(student, root / "student_export", student=STUDENT, teacher_config=TINY,
                 fingerprint=teacher_fingerprint(student), scan_layers=True)
  # A "stage-2" student: its own weights moved, exported as stage 2 leaves a run folder (dit/ + student_export/).
  moved = load_pretrained(root / "teacher", rehyat=STUDENT, seed=3)
  moved.blocks.ffn.fc1.kernel[...] = moved.blocks.ffn.fc1.kernel[...] * 1.5
  export.write_dit(moved, root / "finetuned" / "dit", written_by={"test": True})
  export_student(moved, root / "finetuned" / "student_export", student=STUDENT, teacher_config=TINY,
                 fingerprint=teacher_fingerprint(moved), scan_layers=True)
  data = video.write_toy_dataset(root / "data", SPEC, train_examples=2, test_examples=3)
  out = root / "eval"
  # One student, the run-folder kind (its own weights): it has all three rungs. Compiles dominate the time.
  code = cli.main(["--teacher", str(root / "teacher"), "--student", str(root / "finetuned"), "--name", "stage2",
                   "--data", str(data), "--num-clips", "3", "--timesteps", "300,800", "--sample-steps", "3",
                   "--out", str(out)])
  return root, out, code


def test_cli_writes_every_output(setup):
  _, out, code = setup
  assert code == 0
  for name in ("ladder.md", "ladder.json", "attention_error.png", "velocity_error.png", "sample_agreement.png",
               "temporal.png", "strip.png", "strip.gif", "attention_distance.png", "attention_distance.json"):
    assert (out / name).is_file() and (out / name).stat().st_size > 0, name
  assert (out / "strip.png").read_bytes()[:4] == b"\x89PNG" and (out / "strip.gif").read_bytes()[:3] == b"GIF"


def test_rungs_and_their_meaning(setup):
  _, out, _ = setup
  results = json.loads((out / "ladder.json").read_text())
  names = [r["name"] for r in results["rungs"]]
  assert names == ["teacher", "teacher, other seed", "stage2", "stage2 phi=0", "stage2 softmax"]
  rungs = {r["name"]: r for r in results["rungs"]}
  assert rungs["teacher"]["samples"]["psnr"] == "inf"
  # The student converts every block and ReHyAt differs from softmax; the softmax ceiling converts none.
  assert all(rungs["stage2"]["converted"]) and not any(rungs["stage2 softmax"]["converted"])
  assert min(min(row) for row in rungs["stage2"]["attention_error"]) > 0
  assert rungs["stage2 softmax"]["velocity_error"][0] > 0     # its weights moved away from the teacher's
  assert np.isfinite(rungs["stage2"]["samples"]["psnr"])
  table = (out / "ladder.md").read_text().splitlines()
  assert len(table) == 2 + len(names)
  histogram = np.asarray(json.loads((out / "attention_distance.json").read_text())["histogram"])
  assert histogram.shape == (TINY.num_layers, TINY.num_heads, SPEC.frames)
  np.testing.assert_allclose(histogram.sum(axis=-1), 1.0, rtol=1e-5)   # each head's mass sums to one


def test_a_student_is_an_export_or_a_run_folder(setup):
  root, _, _ = setup
  assert ladder.resolve_student(root / "student_export", root / "teacher") == (str(root / "teacher"),
                                                                                str(root / "student_export"))
  assert ladder.resolve_student(root / "finetuned", root / "teacher") == (str(root / "finetuned" / "dit"),
                                                                          str(root / "finetuned" / "student_export"))
  # The run folder's pair loads, and its export is fingerprinted against its own weights, not the teacher's.
  load_pretrained(root / "finetuned" / "dit", student=root / "finetuned" / "student_export")
  with pytest.raises(ValueError, match="other teacher weights"):
    load_pretrained(root / "teacher", student=root / "finetuned" / "student_export")


def test_zeroed_adapters_are_chunk_local_softmax(setup):
  root, _, _ = setup
  student = load_pretrained(root / "teacher", student=root / "student_export")
  zero = ladder.zero_adapters(student)
  phi = lambda m: jax.tree_util.tree_leaves(nnx.state(m.blocks.self_attn.phi_q))
  assert all(not np.asarray(a).any() for a in phi(zero)) and any(np.asarray(a).any() for a in phi(student))
  # The student itself is untouched, and a different model from its phi = 0 copy.
  x = jax.random.normal(jax.random.key(0), (1, 3, SPEC.frames, 8, 8))
  t, text = np.full((1,), 500.0, np.float32), np.zeros((1, 8, 16), np.float32)
  assert not np.allclose(student(x, t, text), zero(x, t, text))


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
  code = cli.main(["--teacher", str(tmp_path / "missing"), "--student", str(tmp_path / "nope"), "--data",
                   str(tmp_path), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "not a converted DiT checkpoint" in err[0] and "no such directory" in err[0]
