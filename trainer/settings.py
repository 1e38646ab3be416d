"""Defaults and output names of the trainer that its command-line front ends
need (trainer/cli.py, trainer/evaluate.py) without importing TensorFlow. The
job directory's file names are trainer/job.py's."""
from typing import List

from pipeline.io import storage

DEFAULT_HIDDEN = 512  # filters of the RPN's 3x3 conv, as in the paper
# Feature levels of different channel counts go through a 1x1 projection
# each, to this many channels, before the shared head (rpn-train
# --projection): FPN's width.
DEFAULT_PROJECTION = 256
DEFAULT_BOX_LOSS_WEIGHT = 1.0
DEFAULT_SHUFFLE_BUFFER_MB = 256

# rpn-propose's output directory: proposals-SSSSS-of-NNNNN.jsonl shards (one
# line per image, any order), errors.jsonl, pictures/ and, last, propose.json.
PROPOSALS_PREFIX = "proposals"
PROPOSALS_SUFFIX = ".jsonl"
PROPOSALS_PATTERN = "proposals-*-of-*.jsonl"
# One file of proposal lines: what rpn-propose 0.8.0 and earlier wrote (and
# bench/selective_search.py writes); rpn-evaluate reads it too.
PROPOSALS_NAME = "proposals.jsonl"
PROPOSE_SETTINGS_NAME = "propose.json"


def proposal_files(proposals_dir: str) -> List[str]:
  """The files of proposal lines in an output directory: its shards, sorted,
  or the one proposals.jsonl of older outputs; [] when there is neither."""
  shards = sorted(storage.glob(storage.join(proposals_dir, PROPOSALS_PATTERN)))
  if shards:
    return shards
  single = storage.join(proposals_dir, PROPOSALS_NAME)
  return [single] if storage.exists(single) else []
