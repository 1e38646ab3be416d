"""The job directory of rpn-train (--job_dir), without TensorFlow.

What a job holds, by file name (rpn-train writes them; trainer/train.py for
the rest of its layout), the one reader of a finished job's manifest that
rpn-propose checks its --job_dir with and proposes from, and how many epochs
a finished job ran (a rerun with as many keeps its results).

    JOB/manifest.json              the data's manifest (for maps, with the anchors and
                                   targets drawn at training); written first
    JOB/feature_statistics.json    the input standardisation and how it was sampled
    JOB/rpn.weights.h5             the tile model's weights      } written at the end:
    JOB/train_config.json          options and feature statistics } a finished job
    JOB/metrics.json               the last epoch's logs          } holds all three
    JOB/rpn.keras                  the inference model (feature maps -> scores, deltas)
                                   for keras.models.load_model, built-in layers only;
                                   written with the weights (jobs of 0.6 and earlier lack it)
    JOB/best/                      with --val_data: the epoch of least val_loss, a job
                                   dir of its own (weights, manifest, train_config.json
                                   with best_epoch, metrics.json, rpn.keras)
"""
from __future__ import annotations

from typing import List, Optional

from pipeline.commands import preflight
from pipeline.core.config import MANIFEST_NAME
from pipeline.io import manifest as manifest_lib
from pipeline.io import storage

WEIGHTS_NAME = "rpn.weights.h5"
KERAS_NAME = "rpn.keras"
TRAIN_CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.json"
STATISTICS_NAME = "feature_statistics.json"
BEST_DIR = "best"
FILES = (WEIGHTS_NAME, MANIFEST_NAME, TRAIN_CONFIG_NAME)  # of a finished job, for rpn-propose


class JobError(ValueError):
  """A job directory that cannot be used (missing, unfinished, a manifest or
  model that does not fit). `problem`: what is wrong, worded to follow the
  flag and the directory ("--job_dir JOB: <problem>"); str() names the directory."""

  def __init__(self, message: str, problem: Optional[str] = None):
    super().__init__(message)
    self.problem = problem or message


def path(job_dir: str, name: str) -> str:
  """JOB/name."""
  return storage.join(job_dir, name)


def missing(job_dir: str) -> List[str]:
  """The names of FILES that job_dir lacks ([] for a finished job)."""
  return [name for name in FILES if not storage.exists(path(job_dir, name))]


def _error(job_dir: str, problem: str) -> JobError:
  return JobError(f"job directory {job_dir}: {problem}", problem)


def read_manifest(job_dir: str) -> manifest_lib.Manifest:
  """manifest.json of a finished rpn-train job, after checking that its files are all there.

  Raises JobError: no such directory, the files it lacks, or the manifest
  that cannot be read (manifest.ManifestError's message).
  """
  if not preflight.is_dir(job_dir):
    raise _error(job_dir, "no such directory")
  lacking = missing(job_dir)
  if lacking:
    raise _error(job_dir, f"has no {', '.join(lacking)}: not the --job_dir of a finished "
                 f"rpn-train run")
  try:
    return manifest_lib.Manifest.read(path(job_dir, MANIFEST_NAME))
  except manifest_lib.ManifestError as e:
    raise JobError(str(e)) from None


def finished_epochs(job_dir: str) -> Optional[int]:
  """Epochs a finished job ran in all (its train_config.json), None when unfinished."""
  paths = [path(job_dir, name) for name in (TRAIN_CONFIG_NAME, WEIGHTS_NAME, METRICS_NAME)]
  if not all(storage.exists(p) for p in paths):
    return None
  train_config = storage.read_json(paths[0])
  if "epochs_completed" in train_config:
    return int(train_config["epochs_completed"])
  runs = train_config.get("epochs_run") or []  # 0.3.0 and earlier
  return max(runs) + 1 if runs else None
