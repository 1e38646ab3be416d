"""pipeline.commands.lock: one run per output directory, a dead run's lock taken over,
and the object-store variant with its heartbeat."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.commands import lock

HOLDER = r'''
import sys, time
from pipeline.commands import lock
with lock.hold(sys.argv[1], "--output", "holder-command", remote=sys.argv[2] == "remote"):
  print("held", flush=True)
  time.sleep(120)
'''


@pytest.fixture
def holder_process():
  """Starts a process that holds the lock of a directory; yields a starter."""
  started = []

  def start(directory, remote=False):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), "remote" if remote else "local"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    started.append(process)
    assert process.stdout.readline().strip() == "held"
    return process
  yield start
  for process in started:
    process.kill()
    process.wait()


def test_the_lock_says_who_holds_it_and_goes_with_the_run(tmp_path):
  directory = tmp_path / "out"  # created by the lock
  with lock.hold(str(directory), "--output", "rpn-preprocess") as holder:
    with open(directory / lock.LOCK_NAME) as f:
      written = json.load(f)
    assert written == holder
    assert (written["pid"], written["host"], written["command"]) == (
        os.getpid(), socket.gethostname(), "rpn-preprocess")
  assert os.listdir(directory) == []  # released: nothing left behind


def test_a_second_run_is_refused_naming_the_first(tmp_path):
  with lock.hold(str(tmp_path), "--output", "rpn-preprocess") as holder, pytest.raises(
      lock.LockedError) as refused, lock.hold(str(tmp_path), "--output", "rpn-preprocess"):
    pass
  started = lock._utc(holder["started"])  # pylint: disable=protected-access
  assert str(refused.value) == (
      f"--output {tmp_path}: another run is using it (rpn-preprocess, pid {os.getpid()} on "
      f"host {socket.gethostname()}, started {started}); wait for it to end, or use another "
      f"--output")
  with lock.hold(str(tmp_path), "--output", "rpn-preprocess"):  # free again
    pass


def test_a_run_in_another_process_is_refused(tmp_path, holder_process):
  process = holder_process(tmp_path)
  with pytest.raises(lock.LockedError, match=f"holder-command, pid {process.pid} on host"), \
      lock.hold(str(tmp_path), "--job_dir", "rpn-train"):
    pass


def test_a_killed_run_s_lock_is_taken_over_saying_so(tmp_path, holder_process, caplog):
  process = holder_process(tmp_path)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert os.path.exists(tmp_path / lock.LOCK_NAME)  # left behind by the dead run
  with caplog.at_level(logging.WARNING, logger="pipeline.commands.lock"), \
      lock.hold(str(tmp_path), "--output", "rpn-preprocess") as holder, \
      open(tmp_path / lock.LOCK_NAME) as f:
    assert json.load(f)["pid"] == holder["pid"] == os.getpid()
  assert (f"took over the lock of a run that is no longer running (holder-command, pid "
          f"{process.pid} on host") in caplog.text


# --- object stores: the same code on a local directory, forced the remote way


def test_object_store_lock_refuses_a_live_run_and_takes_a_stale_one(tmp_path, caplog,
                                                                     monkeypatch):
  path = tmp_path / lock.LOCK_NAME
  with lock.hold(str(tmp_path), "--output", "first", remote=True):
    assert json.loads(path.read_text())["command"] == "first"
    with pytest.raises(lock.LockedError, match=r"another run is using it \(first, pid"), \
        lock.hold(str(tmp_path), "--output", "second", remote=True):
      pass
  assert not path.exists()
  # A lock whose holder stopped beating more than STALE_S ago is a dead run's.
  dead = {"command": "dead", "host": "h", "pid": 1, "started": 0.0,
          "heartbeat": time.time() - lock.STALE_S - 1}
  path.write_text(json.dumps(dead))
  with caplog.at_level(logging.WARNING, logger="pipeline.commands.lock"), \
      lock.hold(str(tmp_path), "--output", "second", remote=True):
    assert json.loads(path.read_text())["command"] == "second"
  assert "took over the lock of a run that stopped beating" in caplog.text
  assert not path.exists()


def test_object_store_lock_beats(tmp_path, monkeypatch):
  monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
  with lock.hold(str(tmp_path), "--output", "beating", remote=True) as holder:
    deadline = time.time() + 10
    while time.time() < deadline:
      beat = json.loads((tmp_path / lock.LOCK_NAME).read_text())["heartbeat"]
      if beat > holder["started"]:
        break
      time.sleep(0.05)
    assert beat > holder["started"]


def test_object_store_lock_of_another_run_is_not_removed_by_us(tmp_path):
  path = tmp_path / lock.LOCK_NAME
  with lock.hold(str(tmp_path), "--output", "first", remote=True):
    # Another run took it over meanwhile (ours looked stale to it).
    path.write_text(json.dumps({"command": "other", "host": "h", "pid": 2, "started": 1.0,
                                "heartbeat": time.time()}))
  assert json.loads(path.read_text())["command"] == "other"
