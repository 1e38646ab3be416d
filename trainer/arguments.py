"""The typed arguments of train() and propose(), without TensorFlow.

The front ends (trainer/cli.py) build them once from their parsed and checked
flags; the rest of the trainer takes these, never an argparse namespace.
TrainConfig's fields are rpn-train's flags of the same names (the parser is
made from them) and the options train_config.json records.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from pipeline.core import config
from trainer import settings

# The anchors and the target settings a maps dataset is drawn with at training.
Sampling = Tuple[config.AnchorConfig, config.TargetConfig]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """rpn-train's options, one flag each; train_config.json records them."""
  epochs: int = 10
  batch_size: int = 256  # tiles per step
  learning_rate: float = 1e-3  # Adam
  box_loss_weight: float = settings.DEFAULT_BOX_LOSS_WEIGHT
  hidden: int = settings.DEFAULT_HIDDEN
  # width of each level's 1x1 projection, for feature levels of different
  # channel counts only
  projection: int = settings.DEFAULT_PROJECTION
  weight_decay: float = 0.0  # AdamW's decoupled decay of the kernels; 0: Adam
  dropout: float = 0.0  # on the 3x3 conv's output, in training only
  early_stopping_patience: int = 0  # epochs without a better val_loss; 0: off
  steps_per_epoch: Optional[int] = None  # None: one pass over the shards
  shuffle_buffer_mb: int = settings.DEFAULT_SHUFFLE_BUFFER_MB
  mixed_precision: bool = False
  skip_corrupt_shards: bool = False
  verify_shards: bool = False
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainArgs:
  """What rpn-train trains: shard directories of rpn-preprocess, the job dir, the options.

  `sampling`: the anchors and targets a maps dataset is drawn with (the
  flags, resolved by trainer/sampling.py); None for tiles data, and for maps
  data the manifest's, seeded with config.seed.
  """
  data: str
  job_dir: str
  val_data: Optional[str] = None
  config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  sampling: Optional[Sampling] = None


@dataclasses.dataclass(frozen=True)
class ProposeArgs:
  """What rpn-propose proposes with and for: a finished job, exactly one of
  `input` (an ILSVRC-layout root: its annotations give the gt boxes),
  `images` (a glob of image files, no gt boxes) and `maps` (a maps dataset
  of the job's backbone and layer), and the output directory."""
  job_dir: str
  output: str
  input: Optional[str] = None
  split: str = "DET/val"  # under Data/ and Annotations/ of `input`
  images: Optional[str] = None
  maps: Optional[str] = None  # a maps dataset of the job's backbone: the head only
  formats: Tuple[str, ...] = ("jsonl",)  # trainer/formats.py: jsonl, detectron2, coco
  proposal: config.ProposalConfig = dataclasses.field(default_factory=config.ProposalConfig)
  draw: int = 8  # pictures of the first `draw` images
  weights: Optional[str] = None  # backbone weights instead of the manifest's (imagenet|none|PATH)


@dataclasses.dataclass(frozen=True)
class ExportArgs:
  """What rpn-export exports: a finished job (its best/ for --model best),
  backbone weights instead of the manifest's, the proposal settings baked
  into the graph, and the SavedModel's directory."""
  job_dir: str
  output: str
  weights: Optional[str] = None
  proposal: config.ProposalConfig = dataclasses.field(default_factory=config.ProposalConfig)
