"""The README's main job runs end to end and its student forms agree."""

from rehyat_jax import demo


def test_demo_main_job_runs(capsys):
  assert demo.main(["--frames", "5", "--height", "4", "--width", "6", "--skip-training"]) == 0
  out = capsys.readouterr().out
  assert "RANDOM weights" in out
  assert "student recurrent_forward (whole DiT)" in out
