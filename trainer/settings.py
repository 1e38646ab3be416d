"""Defaults and output names of the trainer that its command-line front ends
need (trainer/cli.py, trainer/evaluate.py) without importing TensorFlow. The
job directory's file names are trainer/job.py's."""

DEFAULT_HIDDEN = 512  # filters of the RPN's 3x3 conv, as in the paper
DEFAULT_BOX_LOSS_WEIGHT = 1.0
DEFAULT_SHUFFLE_BUFFER_MB = 256

# rpn-propose's output directory
PROPOSALS_NAME = "proposals.jsonl"
PROPOSE_SETTINGS_NAME = "propose.json"
