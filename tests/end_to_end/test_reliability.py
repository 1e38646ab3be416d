"""Runtime failures and runs that meet: one run per output directory (the
installed console scripts in subprocesses)."""
import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.commands import lock
from pipeline.io import manifest as manifest_lib
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from tests import trainer_fixtures
from tests.end_to_end.test_fail_fast import assert_one_line_error, run_script

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("reliability_data"))
  fixtures.write_dataset(root, "DET/train", num_images=24, seed=5)
  return root


def _preprocess_command(root, output, *extra):
  return [os.path.join(BIN, "rpn-preprocess"), "--input", root, "--output", output,
          "--backbone", helpers.TINY, "--weights", "none", "--num_shards", "2",
          "--runner=DirectRunner", "--direct_running_mode=in_memory", *extra]


def test_a_second_preprocess_into_a_live_run_s_output_is_refused(dataset, tmp_path):
  output = str(tmp_path / "shards")
  first = subprocess.Popen(_preprocess_command(dataset, output), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  lock_file = os.path.join(output, lock.LOCK_NAME)
  deadline = time.monotonic() + 120
  while not os.path.exists(lock_file) and time.monotonic() < deadline and first.poll() is None:
    time.sleep(0.05)
  assert os.path.exists(lock_file), "the first run never took its lock"
  with open(lock_file) as f:
    holder = json.load(f)
  second = subprocess.run(_preprocess_command(dataset, output, "--seed", "1"),
                          capture_output=True, text=True, timeout=300)
  # The refusal must have met the live first run (else this test proves nothing).
  assert first.poll() is None, "the first run ended before the second was refused"
  line = assert_one_line_error(second, "rpn-preprocess", f"--output {output}",
                               f"another run is using it (rpn-preprocess, pid {first.pid} on "
                               f"host {holder['host']}, started ",
                               "wait for it to end, or use another --output")
  print(line)
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  # The first run's output is whole: its manifest, its seed, every image.
  manifest = manifest_lib.Manifest.read(os.path.join(output, "manifest.json"))
  assert manifest.targets["seed"] == 0 and manifest.counts["images_ok"] == 24
  helpers.check_accounting(output, manifest, os.path.join(dataset, "Data", "DET", "train"))
  assert not os.path.exists(lock_file)  # released at the end


HOLD = r'''
import sys, time
from pipeline.commands import lock
with lock.hold(sys.argv[1], "--job_dir", "rpn-train"):
  print("held", flush=True)
  time.sleep(120)
'''


def test_a_second_train_into_a_live_job_is_refused(tmp_path):
  data = str(tmp_path / "data")
  trainer_fixtures.write_shards(data, num_records=40, num_shards=1)
  job = str(tmp_path / "job")
  holder = subprocess.Popen([sys.executable, "-c", HOLD, job], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    result = run_script("rpn-train", ["--data", data, "--job_dir", job, "--epochs", "1"])
    assert_one_line_error(result, "rpn-train", f"--job_dir {job}",
                          f"another run is using it (rpn-train, pid {holder.pid} on host")
    assert os.listdir(job) == [lock.LOCK_NAME]  # nothing written by the refused run
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: the next run takes the lock over and trains.
  result = run_script("rpn-train", ["--data", data, "--job_dir", job, "--epochs", "1"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "took over the lock of a run that is no longer running (rpn-train, pid " \
         f"{holder.pid}" in result.stderr
  assert not os.path.exists(os.path.join(job, lock.LOCK_NAME))


# ---------------------------------------------------------------------------
# A full disk: a tmpfs of a few hundred KB (mounting needs root; skipped otherwise)


@pytest.fixture
def small_disk(tmp_path):
  """mount(size) -> a directory on a tmpfs of that size; resize(size) grows it."""
  mounted = []

  def mount(size):
    point = tmp_path / f"disk{len(mounted)}"
    point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
      pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    mounted.append(point)
    return point
  yield mount
  for point in mounted:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _resize(point, size):
  subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)


def _error_line(result, command):
  """The last stderr line, the only one but progress lines; asserts it is the
  command's error line."""
  lines = result.stderr.splitlines()
  others = [line for line in lines[:-1] if "progress (worker" not in line
            and "training on the CPU" not in line]
  assert not others, result.stderr[-3000:]
  assert lines[-1].startswith(f"{command}: error: "), lines[-1]
  assert "Traceback" not in result.stderr
  return lines[-1]


def test_full_disk_while_preprocessing(dataset, small_disk, tmp_path):
  disk = small_disk("300k")
  output = str(disk / "shards")
  # The estimate (24 images, ~650 KB) refuses to start on 300 KB.
  refused = subprocess.run(_preprocess_command(dataset, output), capture_output=True,
                           text=True, timeout=300)
  assert_one_line_error(refused, "rpn-preprocess", f"--output {output}",
                        "needs about", "--no_space_check")
  assert refused.stdout.startswith("output: about ")
  assert not os.path.exists(output)
  # Told to go on, it runs out of space while writing the shards.
  result = subprocess.run(_preprocess_command(dataset, output, "--no_space_check"),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  line = _error_line(result, "rpn-preprocess")
  print(line)
  assert "out of disk space (No space left on device)" in line
  assert "at step WriteOutputs/" in line and "the run's partial output was removed" in line
  log = line.split("(traceback: ")[1].rstrip(")")
  with open(log) as f:
    assert "No space left on device" in f.read()
  # Nothing looks complete and nothing keeps the disk full (the log may be there).
  left = [n for n in os.listdir(output) if n != "failure.log"]
  assert left == [], left
  # With room, the rerun gives the whole output.
  _resize(disk, "20m")
  rerun = subprocess.run(_preprocess_command(dataset, output), capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  manifest = manifest_lib.Manifest.read(os.path.join(output, "manifest.json"))
  helpers.check_accounting(output, manifest, os.path.join(dataset, "Data", "DET", "train"))
  assert "failure.log" not in os.listdir(output)  # the failed run's, cleared by the rerun


def test_full_disk_at_a_training_checkpoint_keeps_the_last_good_one(small_disk, tmp_path):
  data = str(tmp_path / "data")
  trainer_fixtures.write_shards(data, num_records=40, num_shards=1)
  reference = str(tmp_path / "reference")
  args = ["--data", data, "--epochs", "3", "--seed", "1"]
  assert run_script("rpn-train", args + ["--job_dir", reference]).returncode == 0
  weights = os.path.getsize(os.path.join(reference, "rpn.weights.h5"))
  # Room for epochs 1 and 2 (two backups, two checkpoints) but not for epoch 3's
  # checkpoint: about 4.5 weights files.
  disk = small_disk(str(int(4.5 * weights)))
  job = str(disk / "job")
  result = run_script("rpn-train", args + ["--job_dir", job])
  assert result.returncode == 1, result.stderr[-3000:]
  line = _error_line(result, "rpn-train")
  print(line)
  assert line.startswith(f"rpn-train: error: out of disk space (No space left on device) "
                         f"writing {job}/checkpoints/epoch-003.weights.h5: free space there or "
                         f"write to another --job_dir (traceback: {job}/failure.log)")
  with open(os.path.join(job, "backup", "training_metadata.json")) as f:
    assert json.load(f)["epoch"] == 2  # the resume point: the last epoch fully written
  _resize(disk, "50m")
  rerun = run_script("rpn-train", args + ["--job_dir", job])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Epoch 3/3" in rerun.stdout and "Epoch 2/3" not in rerun.stdout  # resumed
  import h5py
  for epoch in (1, 2, 3):  # every checkpoint whole, the cut one written again
    with h5py.File(os.path.join(job, "checkpoints", f"epoch-{epoch:03d}.weights.h5")) as f:
      assert len(f.keys()) > 0
  with open(os.path.join(job, "metrics.json")) as f, \
      open(os.path.join(reference, "metrics.json")) as g:
    ours, theirs = json.load(f), json.load(g)
  assert ours.keys() == theirs.keys()
  print({k: (ours[k], theirs[k]) for k in ours})
  assert not os.path.exists(os.path.join(job, "failure.log"))


# ---------------------------------------------------------------------------
# A worker process killed (as for memory) in the middle of a multi-process run


def _python_workers(launcher_pid):
  """The SDK worker processes (python) under the launcher's /bin/sh children."""
  found = []
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = f.read()
    except OSError:
      continue
    if b"sdk_worker_main" in command and b"/bin/sh" not in command:
      try:
        with open(f"/proc/{parent}/stat") as f:
          grandparent = int(f.read().rsplit(")", 1)[1].split()[1])
      except OSError:
        continue
      if launcher_pid in (parent, grandparent):
        found.append(int(pid))
  return found


def test_a_worker_killed_mid_run_fails_cleanly_and_a_rerun_is_whole(dataset, tmp_path):
  import signal
  output = str(tmp_path / "shards")
  command = [os.path.join(BIN, "rpn-preprocess"), "--input", dataset, "--output", output,
             "--backbone", helpers.TINY, "--weights", "none", "--num_shards", "2",
             "--runner=DirectRunner", "--direct_running_mode=multi_processing",
             "--direct_num_workers=2"]
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  killed = None
  while time.monotonic() < deadline and process.poll() is None and killed is None:
    workers = _python_workers(process.pid)
    # Once the workers run the pipeline (their first images are done).
    if workers and glob_any(os.path.join(output, "beam-temp-*")):
      os.kill(workers[0], signal.SIGKILL)
      killed = workers[0]
    time.sleep(0.05)
  out, err = process.communicate(timeout=300)
  assert killed is not None, "no worker to kill before the run ended"
  result = subprocess.CompletedProcess(command, process.returncode, out, err)
  assert result.returncode == 1, err[-3000:]
  line = _error_line(result, "rpn-preprocess")
  print(line)
  assert "a worker process ended in the middle of the run" in line
  assert "the run's partial output was removed" in line
  assert [n for n in os.listdir(output) if n != "failure.log"] == []
  rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  manifest = manifest_lib.Manifest.read(os.path.join(output, "manifest.json"))
  helpers.check_accounting(output, manifest, os.path.join(dataset, "Data", "DET", "train"))
  assert manifest.counts["images_ok"] == 24


def glob_any(pattern):
  import glob
  return bool(glob.glob(pattern))


# ---------------------------------------------------------------------------
# A shard spoilt between preprocessing and training


def test_a_shard_spoilt_after_preprocessing_is_named_and_can_be_left_out(tmp_path):
  data = str(tmp_path / "data")
  trainer_fixtures.write_shards(data, num_records=60, num_shards=2)
  victim = os.path.join(data, "tiles-00001-of-00002.tfrecord")
  size = os.path.getsize(victim)
  with open(victim, "wb") as f:  # same size, so the manifest's size check passes
    f.write(os.urandom(size))
  job = str(tmp_path / "job")
  result = run_script("rpn-train", ["--data", data, "--job_dir", job, "--epochs", "1"])
  assert result.returncode == 2, result.stderr[-3000:]  # the data is what is wrong
  line = _error_line(result, "rpn-train")
  assert f"{victim}: corrupt header of record 0" in line and "--skip_corrupt_shards" in line
  assert line.endswith(f"(traceback: {job}/failure.log)")
  assert not os.path.exists(os.path.join(job, "rpn.weights.h5"))  # nothing looks trained
  skipped = run_script("rpn-train", ["--data", data, "--job_dir", job, "--epochs", "1",
                                     "--skip_corrupt_shards"])
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert "epoch 1: training saw 30 of the 60 tiles in its shards (30 lost to corrupt " \
         "records)" in skipped.stderr
  # A shard gone altogether: refused before training, naming it.
  os.remove(victim)
  gone = run_script("rpn-train", ["--data", data, "--job_dir", str(tmp_path / "job2")])
  assert_one_line_error(gone, "rpn-train", "--data", f"{victim}: shard listed in")
