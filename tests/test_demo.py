"""The README's main job, end to end at CI scale, as a real subprocess."""
import os
import subprocess
import sys


def test_demo_runs_end_to_end_and_writes_every_report_file(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = tmp_path / "report"
  cmd = [sys.executable, "-m", "launch.demo", "--scale=ci", f"--workdir={tmp_path / 'w'}",
         f"--out_dir={out}", "--steps=1,2", "--student_steps=1,2",
         f"--data_dir={tmp_path / 'tfds'}"]
  proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.json", "results.md", "quality_vs_steps.png", "panels_N1.png",
               "panels_N2.png"):
    assert (out / name).exists(), name
  assert any(p.suffix == ".png" for p in (out / "samples").iterdir())
  assert "| teacher | 2 |" in (out / "results.md").read_text()
  assert "| student | 2 |" in (out / "results.md").read_text()
