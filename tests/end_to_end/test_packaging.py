"""setup.py: the sdist that --setup_file ships to Dataflow/Flink workers holds
both packages, and the console scripts resolve."""
import subprocess
import sys
import tarfile
from importlib import metadata

import pytest


def test_sdist_ships_both_packages(tmp_path, repo_root):
  subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], check=True,
                 capture_output=True, cwd=repo_root)
  (archive,) = tmp_path.glob("*.tar.gz")
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  for module in ("pipeline/commands/preprocess.py", "pipeline/beam/preprocess.py",
                 "pipeline/core/targets.py", "pipeline/io/manifest.py",
                 "pipeline/model/backbone.py",
                 "trainer/train.py", "trainer/propose.py"):
    assert any(name.endswith(module) for name in names), module


@pytest.mark.parametrize("script", ["rpn-preprocess", "rpn-anchors", "rpn-sample-data", "rpn-draw",
                                    "rpn-train", "rpn-propose", "rpn-evaluate"])
def test_console_scripts_resolve(script):
  (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == script]
  assert callable(entry.load())
