"""Shared fixtures, and the one place that finds optional test data.

Optional data (never committed; a test that needs it skips, saying where it looked):
  RPN_ILSVRC_SAMPLES  real ILSVRC files (VID frames with XML, DET and CLS-LOC XML);
                      default: shared/data/ilsvrc_samples beside the checkout
  RPN_VGG16_WEIGHTS   real VGG16 convolution weights (--backbone VGG16 --weights PATH);
                      default: shared/weights/vgg16_hed_notop.weights.h5 beside the checkout
"Beside the checkout" is the directory that contains the repository, found
from this file's location.
"""
from __future__ import annotations

import os
import tempfile

import pytest

# The launcher remembers passed backbone checks (pipeline/commands/preflight.py); the
# tests, and the commands they start, keep theirs apart from the user's.
os.environ["RPN_CACHE_DIR"] = tempfile.mkdtemp(prefix="rpn-test-cache-")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ROOT = os.path.join(os.path.dirname(REPO_ROOT), "shared")

ILSVRC_SAMPLES_ENV = "RPN_ILSVRC_SAMPLES"
VGG16_WEIGHTS_ENV = "RPN_VGG16_WEIGHTS"
DEFAULT_ILSVRC_SAMPLES = os.path.join(SHARED_ROOT, "data", "ilsvrc_samples")
DEFAULT_VGG16_WEIGHTS = os.path.join(SHARED_ROOT, "weights", "vgg16_hed_notop.weights.h5")


def optional_data_path(env_var: str, default: str) -> str:
  """The path the environment variable names, else the default (normalised)."""
  return os.path.normpath(os.environ.get(env_var) or default)


def _require(env_var: str, default: str, exists) -> str:
  path = optional_data_path(env_var, default)
  if not exists(path):
    source = f"${env_var}" if os.environ.get(env_var) else f"default, ${env_var} unset"
    pytest.skip(f"optional test data absent: {path} ({source}); set {env_var} to use it")
  return path


@pytest.fixture(scope="session")
def repo_root() -> str:
  """The repository's root directory (for subprocesses that import its packages)."""
  return REPO_ROOT


@pytest.fixture(scope="session")
def ilsvrc_samples() -> str:
  """Root of the real ILSVRC sample files (ILSVRC 2015+ layout); skips when absent."""
  return _require(ILSVRC_SAMPLES_ENV, DEFAULT_ILSVRC_SAMPLES, os.path.isdir)


@pytest.fixture(scope="session")
def vgg16_weights() -> str:
  """Path of the real VGG16 (no top) weights file; skips when absent."""
  return _require(VGG16_WEIGHTS_ENV, DEFAULT_VGG16_WEIGHTS, os.path.isfile)


# ---------------------------------------------------------------------------
# Shard directories like rpn-preprocess writes (tests/trainer_fixtures.py)


@pytest.fixture(scope="module", params=[("float32", "NONE"), ("float16", "GZIP")],
                ids=["float32", "float16-gzip"])
def shard_dir(request, tmp_path_factory):
  """(directory, manifest, records): 45 records, SHARD_DIR_CHANNELS channels, 3 shards,
  float32 uncompressed and float16 GZIP."""
  from tests import trainer_fixtures as fixtures
  dtype, compression = request.param
  directory = str(tmp_path_factory.mktemp(f"{dtype}-{compression}"))
  manifest, records = fixtures.write_shards(
      directory, num_records=45, channels=fixtures.SHARD_DIR_CHANNELS, num_shards=3,
      dtype=dtype, compression=compression)
  return directory, manifest, records


# ---------------------------------------------------------------------------
# rpn-propose's end-to-end run, shared by tests/trainer/test_propose.py and
# tests/trainer/test_evaluate.py (session scope: it runs once).


@pytest.fixture(scope="session")
def untrained_job(tmp_path_factory) -> str:
  """A job directory: MobileNetV2 (random weights) and a small random RPN head."""
  from tests import trainer_fixtures as fixtures
  job = str(tmp_path_factory.mktemp("job"))
  fixtures.save_job(job, fixtures.job_manifest(), fixtures.JOB_CHANNELS, fixtures.JOB_HIDDEN)
  return job


@pytest.fixture(scope="session")
def val_dataset(tmp_path_factory) -> str:
  """trainer_fixtures.write_val_dataset in a temp directory; returns its root."""
  from tests import trainer_fixtures as fixtures
  return fixtures.write_val_dataset(str(tmp_path_factory.mktemp("ilsvrc")))


@pytest.fixture(scope="session")
def proposals(untrained_job, val_dataset, tmp_path_factory) -> str:
  """rpn-propose's output directory for val_dataset (top 50, min_size 4, 2 pictures)."""
  from tests import pipeline_helpers as helpers
  from trainer import cli as trainer_cli
  out = str(tmp_path_factory.mktemp("proposals"))
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--input", val_dataset,
                                   "--split", "DET/val", "--output", out,
                                   "--post_nms_top_n", "50", "--min_size", "4", "--draw", "2",
                                   *helpers.IN_PROCESS])
  assert code == 0
  return out
