"""The Makefile's RECOMMENDED variable: make preprocess takes rpn-anchors' flags."""
import json
import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_preprocess_takes_the_recommended_flags(tmp_path):
  flags = ["--backbone", "VGG16", "--feature_layers", "block4_conv3,block5_conv3",
           "--scales", "3,6.727,22.627", "--ratios", "0.5,1,2", "--flip"]
  report = tmp_path / "anchors.json"
  report.write_text(json.dumps({"recommended_flags": flags}))
  dry_run = subprocess.run(["make", "-n", "preprocess", f"RECOMMENDED={report}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
  lines = dry_run.replace("\\\n", " ").splitlines()  # continuation lines joined
  commands = [" ".join(line.split()) for line in lines if "bin/rpn-preprocess " in line]
  assert len(commands) == 2  # the training and the held-out split
  for command in commands:
    assert shlex.join(flags) in command, command
