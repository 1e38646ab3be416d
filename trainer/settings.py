"""Names and defaults of the trainer that its command-line front end needs
(trainer/cli.py) without importing TensorFlow."""
from pipeline.core.config import MANIFEST_NAME

# The files of a job directory (rpn-train's --job_dir).
WEIGHTS_NAME = "rpn.weights.h5"
TRAIN_CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.json"
JOB_MANIFEST_NAME = MANIFEST_NAME  # the data's manifest, copied
JOB_FILES = (WEIGHTS_NAME, JOB_MANIFEST_NAME, TRAIN_CONFIG_NAME)  # of a finished job

DEFAULT_HIDDEN = 512  # filters of the RPN's 3x3 conv, as in the paper
DEFAULT_BOX_LOSS_WEIGHT = 1.0
DEFAULT_SHUFFLE_BUFFER_MB = 256

# rpn-propose's output directory
PROPOSALS_NAME = "proposals.jsonl"
PROPOSE_SETTINGS_NAME = "propose.json"
