"""Run `rpn-preprocess` on Beam's PortableRunner against a local job service.

This is how a Flink (or Spark) cluster runs Python pipelines: the runner talks
to a job service over gRPC and the Python code runs in SDK workers that an
external worker pool starts (`--environment_type EXTERNAL`). Here both servers
run locally, started and stopped by this module, with this interpreter (the
venv's python), so the pipeline code and its dependencies are the same.

    python -m pipeline.commands.portable [--workers 2] -- <rpn-preprocess flags>

Beam's local job service always runs one SDK worker (it calls the
FnApiRunner's run_via_runner_api directly, which ignores
--direct_num_workers). To run several workers in parallel, as a Flink task
manager does, the job service here is started through `job_service_main`,
which sets the runner's worker count from RPN_PORTABLE_WORKERS first.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from apache_beam.runners.portability import local_job_service_main
from apache_beam.runners.portability.fn_api_runner import fn_runner

from pipeline.beam import preprocess as preprocess_beam
from pipeline.commands import preprocess as run_lib

_LOGGER = logging.getLogger(__name__)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log_path: str,
                   timeout_s: float = 60.0) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if process.poll() is not None:
      with open(log_path) as f:
        raise RuntimeError(f"server exited with {process.returncode}:\n{f.read()[-2000:]}")
    with socket.socket() as s:
      if s.connect_ex(("localhost", port)) == 0:
        return
    time.sleep(0.2)
  raise TimeoutError(f"nothing listens on port {port} after {timeout_s:.0f} s (log: {log_path})")


def _stop(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


@contextlib.contextmanager
def local_portable_services(log_dir: Optional[str] = None,
                            workers: int = 2) -> Iterator[Tuple[str, str]]:
  """Starts a worker pool and a job service; yields (job_endpoint, worker_pool)."""
  log_dir = log_dir or tempfile.mkdtemp(prefix="rpn-portable-")
  os.makedirs(log_dir, exist_ok=True)
  pool_port, job_port = free_port(), free_port()
  # The pool starts SDK workers as `python ...` from PATH: make that this
  # interpreter (the venv's), which has apache_beam and this package.
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  processes: List[subprocess.Popen] = []
  try:
    pool_log = os.path.join(log_dir, "worker_pool.log")
    with open(pool_log, "w") as log:
      pool = subprocess.Popen(
          [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
           f"--service_port={pool_port}"], stdout=log, stderr=subprocess.STDOUT, env=env)
    processes.append(pool)
    _wait_for_port(pool_port, pool, pool_log)
    job_log = os.path.join(log_dir, "job_service.log")
    with open(job_log, "w") as log:
      job = subprocess.Popen(
          [sys.executable, "-m", "pipeline.commands.portable", "--job_service",
           f"--port={job_port}", f"--staging_dir={os.path.join(log_dir, 'staging')}"],
          stdout=log, stderr=subprocess.STDOUT, env=dict(env, RPN_PORTABLE_WORKERS=str(workers)))
    processes.append(job)
    _wait_for_port(job_port, job, job_log)
    _LOGGER.warning("job service on localhost:%d, worker pool on localhost:%d (logs in %s)",
                    job_port, pool_port, log_dir)
    yield f"localhost:{job_port}", f"localhost:{pool_port}"
  finally:
    for process in reversed(processes):
      _stop(process)


def portable_args(job_endpoint: str, worker_pool: str, workers: int) -> List[str]:
  return ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
          "--environment_type=EXTERNAL", f"--environment_config={worker_pool}",
          f"--direct_num_workers={workers}", f"--sdk_worker_parallelism={workers}"]


def run(argv: Sequence[str], workers: int = 2, log_dir: Optional[str] = None,
        extractor_factory=None) -> preprocess_beam.PreprocessResult:
  """Runs rpn-preprocess with `argv` on the local portable services."""
  with local_portable_services(log_dir, workers) as (job_endpoint, worker_pool):
    return run_lib.run(list(argv) + portable_args(job_endpoint, worker_pool, workers),
                       extractor_factory=extractor_factory)


def job_service_main(argv: Sequence[str]) -> None:
  """Beam's local job service, running RPN_PORTABLE_WORKERS SDK workers per stage."""
  workers = int(os.environ.get("RPN_PORTABLE_WORKERS", "1"))
  original = fn_runner.FnApiRunner.run_via_runner_api

  def run_with_workers(self, pipeline_proto, options):
    self._num_workers = workers  # what run_pipeline does from --direct_num_workers
    return original(self, pipeline_proto, options)

  fn_runner.FnApiRunner.run_via_runner_api = run_with_workers
  local_job_service_main.run(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "--job_service":
    logging.getLogger().setLevel(logging.INFO)
    job_service_main(argv[1:])
    return 0
  own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
  parser = argparse.ArgumentParser(prog="python -m pipeline.commands.portable")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--log_dir")
  args = parser.parse_args(own)
  result = run(rest, workers=args.workers, log_dir=args.log_dir)
  print(run_lib.summary(result.manifest))
  return 0


if __name__ == "__main__":
  sys.exit(main())
