"""trainer.gpu_check (`make gpu-check`): skips without a GPU, fails when
TensorFlow cannot see GPUs that are there, and compares runs (on the CPU here)."""
import math
import subprocess
import sys

import pytest

from trainer import gpu_check


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
  monkeypatch.setattr(gpu_check, "physical_gpus", lambda: [])
  monkeypatch.setattr(gpu_check, "nvidia_smi_gpus", lambda: [])
  assert gpu_check.main([]) == 0
  assert "no GPU on this machine" in capsys.readouterr().out


def test_gpus_tensorflow_cannot_see_fail(monkeypatch, capsys):
  monkeypatch.setattr(gpu_check, "physical_gpus", lambda: [])
  monkeypatch.setattr(gpu_check, "nvidia_smi_gpus", lambda: ["GPU 0: NVIDIA H100 (UUID: x)"])
  assert gpu_check.main([]) == 1
  assert "TensorFlow sees none; install the gpu extra" in capsys.readouterr().err


def test_make_gpu_check_passes_on_this_machine(repo_root):
  """As `make gpu-check` runs it: no GPU here, so it skips with exit 0."""
  proc = subprocess.run([sys.executable, "-m", "trainer.gpu_check"], cwd=repo_root,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "no GPU on this machine" in proc.stdout


def _run(*losses):
  return {"rows": [{"epoch": float(i), "loss": v, "val_loss": v + 0.1}
                   for i, v in enumerate(losses)], "seconds": 1.0, "replicas": 1}


def test_compare_flags_non_finite_and_distant_losses():
  assert gpu_check.compare({"cpu": _run(1.0, 0.5), "gpu": _run(1.0, 0.52)}, "cpu", 0.1) == []
  problems = gpu_check.compare({"cpu": _run(1.0, 0.5), "gpu": _run(math.nan, 0.5),
                                "gpu-mixed": _run(1.0, 0.8)}, "cpu", 0.1)
  assert any("gpu: loss of epoch 1 is nan" in p for p in problems)
  assert any(p.startswith("gpu-mixed: loss 0.8000 against 0.5000") for p in problems)
  assert any(p.startswith("gpu-mixed: val_loss") for p in problems)


@pytest.mark.slow
def test_the_whole_check_with_the_cpu_standing_in(tmp_path, capsys):
  """Sample shards, three rpn-train runs and the comparison, end to end (about 70 s)."""
  assert gpu_check.main(["--on_cpu", "--work", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "gpu-check: passed" in out
  for name in ("cpu", "gpu", "gpu-mixed"):
    assert (tmp_path / "jobs" / name / "rpn.weights.h5").is_file()
