"""Runtime failures in one line (pipeline.commands.failures, cli.run_command) and the
console that holds Beam's and the workers' stderr back (pipeline.commands.console)."""
import errno
import os
import subprocess
import sys

import pytest

from pipeline.commands import cli, console, failures

BEAM_STEP = "WriteOutputs/WriteShards/Write/WriteImpl/WriteBundles"


def _beam_wrapped(text):
  """What multi-process DirectRunner raises: the worker's error as text."""
  try:
    try:
      raise OSError(text)
    except OSError as inner:
      raise RuntimeError(f"{text} [while running '{BEAM_STEP}']") from inner
  except RuntimeError as e:
    return e


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/beam-temp-x/1"),
     "out of disk space (No space left on device) writing /out/beam-temp-x/1: free space "
     "there or write to another --output"),
    (_beam_wrapped("OSError: [Errno 28] No space left on device"),
     f"out of disk space (No space left on device) at step {BEAM_STEP}: free space there or "
     f"write to another --output"),
    (_beam_wrapped("PermissionError: [Errno 13] Permission denied: '/out/tiles-00000'"),
     f"permission denied (Permission denied) writing /out/tiles-00000 at step {BEAM_STEP}: "
     f"make it writable for this user or write to another --output"),
    (OSError(errno.EROFS, "Read-only file system", "/out/x"),
     "read-only file system (Read-only file system) writing /out/x: write to another --output"),
    (RuntimeError("Channel closed prematurely."),
     "a worker process ended in the middle of the run (killed, e.g. for memory: see dmesg): "
     "rerun; if memory is short, use fewer worker processes (--direct_num_workers) or a "
     "smaller --max_pixels"),
    (MemoryError(), "out of memory: use fewer worker processes (--direct_num_workers) or a "
                    "smaller --max_pixels, or a machine with more memory"),
    (_beam_wrapped("Forbidden: 403 POST https://storage.googleapis.com/upload: x@y does not "
                   "have storage.objects.create access to the bucket"),
     "the store refused a request at step " + BEAM_STEP + " (Forbidden: 403 POST "
     "https://storage.googleapis.com/upload: x@y does not have storage.objects.create access "
     "to the bucket): check the credentials and their permissions on --output, then rerun"),
    (KeyError("scores"), "KeyError: 'scores'"),
])
def test_describe(error, line):
  assert failures.describe(error) == line


def test_describe_names_the_output_when_the_error_has_no_path():
  error = OSError(errno.ENOSPC, "No space left on device")
  assert failures.describe(error, "--job_dir", output="/jobs/a") == (
      "out of disk space (No space left on device) writing to --job_dir /jobs/a: free space "
      "there or write to another --job_dir")


def test_the_log_goes_to_the_output_else_to_the_temp_directory(tmp_path):
  try:
    raise ValueError("deep down")
  except ValueError as e:
    error = e
  captured = tmp_path / "captured.log"
  captured.write_text("worker says hello\n")
  path = failures.write_log(str(tmp_path), "rpn-x", error, ["rpn-x", "--a"], str(captured))
  assert path == str(tmp_path / failures.LOG_NAME)
  text = (tmp_path / failures.LOG_NAME).read_text()
  assert "command line: rpn-x --a" in text and "ValueError: deep down" in text
  assert text.endswith("worker says hello\n")


def test_the_log_falls_back_to_the_temp_directory(tmp_path, monkeypatch):
  import tempfile
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  path = failures.write_log(str(tmp_path / "not-a-dir"), "rpn-x", ValueError("v"))
  assert path == str(tmp_path / f"rpn-x-{os.getpid()}-{failures.LOG_NAME}")
  with open(path) as f:
    assert "ValueError: v" in f.read()


def test_run_command_gives_a_runtime_failure_one_line_and_exit_1(tmp_path, capsys):
  def command():
    cli.running(str(tmp_path), "--job_dir")
    raise OSError(errno.ENOSPC, "No space left on device")
  assert cli.run_command("rpn-x", command) == 1
  err = capsys.readouterr().err
  log = tmp_path / failures.LOG_NAME
  assert err == (f"rpn-x: error: out of disk space (No space left on device) writing to "
                 f"--job_dir {tmp_path}: free space there or write to another --job_dir "
                 f"(traceback: {log})\n")
  assert "Traceback (most recent call last)" in log.read_text()


def test_run_command_keeps_usage_errors_at_exit_2_before_the_work(capsys):
  def command():
    raise ValueError("--x 3: bad")
  assert cli.run_command("rpn-x", command) == 2
  assert capsys.readouterr().err == "rpn-x: error: --x 3: bad\n"

  def later():  # once the work has started: the same line and code, and a log
    cli.running("/nonexistent/out")
    raise ValueError("bad shard")
  assert cli.run_command("rpn-x", later) == 2
  err = capsys.readouterr().err
  assert err.startswith("rpn-x: error: bad shard (traceback: ")
  os.remove(err.split("(traceback: ")[1].strip().rstrip(")"))


def test_verbose_prints_the_traceback_too(tmp_path, capsys):
  parser = cli.Parser(prog="rpn-x")
  parser.parse(["--verbose"])

  def command():
    cli.running(str(tmp_path))
    raise KeyError("k")
  try:
    assert cli.run_command("rpn-x", command) == 1
  finally:
    parser.parse([])  # --verbose off again for the other tests
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err
  assert err.splitlines()[-1].startswith("rpn-x: error: KeyError: 'k' (traceback: ")


CHILD = r'''
import sys
sys.stderr.write("WARNING: All log messages before absl::InitializeLog()\n")
sys.stderr.write("INFO:pipeline.progress:progress (worker 7): 3 images done in 1 s\n")
sys.stderr.write("Traceback (most recent call last):\n  boom\n")
'''


def test_held_back_shows_progress_and_own_records_and_logs_the_rest(tmp_path):
  # In a fresh process: the capture replaces file descriptor 2.
  script = r'''
import logging, subprocess, sys
from pipeline.commands import cli, console
cli.setup_logging()
def command():
  with console.held_back("rpn-x"):
    subprocess.run([sys.executable, "-c", sys.argv[1]])
    logging.getLogger("pipeline.commands.preprocess").warning("our own warning")
    logging.getLogger("apache_beam.runners").warning("beam's warning")
    raise OSError(28, "No space left on device")
sys.exit(cli.run_command("rpn-x", command))
'''
  temp = tmp_path / "tmp"
  temp.mkdir()
  result = subprocess.run([sys.executable, "-c", script, CHILD], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TMPDIR=str(temp)),
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__))))))
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert lines[0] == "INFO:pipeline.progress:progress (worker 7): 3 images done in 1 s"
  assert lines[1].endswith("WARNING our own warning")
  assert lines[2].startswith("rpn-x: error: out of disk space (No space left on device)")
  assert len(lines) == 3, result.stderr
  log = lines[2].split("(traceback: ")[1].rstrip(")")
  # The failure log took in what was held back, and the capture file is gone.
  assert os.listdir(temp) == [os.path.basename(log)]
  with open(log) as f:
    text = f.read()
  assert "absl::InitializeLog" in text and "boom" in text and "beam's warning" in text


def test_held_back_is_off_when_not_enabled(capfd):
  with console.held_back("rpn-x", enabled=False):
    os.write(2, b"shown as it is\n")
  assert capfd.readouterr().err == "shown as it is\n"
