"""What rpn-anchors recommends: the whole rpn-preprocess setting for a dataset.

`rpn-anchors --input ROOT --split DET/train --backbone NAME --output DIR`
with no other flag recommends every flag of rpn-preprocess that decides what
the RPN learns from, as one list (anchors.json's "recommended_flags") and one
line to paste:

- the feature layer(s): what the flags gave, else the backbone's recommended
  layers (registry.RECOMMENDED_LAYERS: two levels for VGG16);
- the scales and ratios: the search's suggested set for this data at those
  layers (coverage.search_anchors);
- the frame: the resize flags as given (none by default);
- --flip: mirrored training images.

Each choice follows the held-out measurements on real photographs
(BENCHMARKS.md sections 14 to 17); `reasons` says why, in anchors.json's
"recommended_why". What the measurements left at the commands' defaults
(the tiles layout, positives from IoU 0.7, rpn-train's 10 epochs with no
regularisation, rpn-propose's --min_size 16 and --nms_thresh 0.7) is not
repeated in the flags. Pure Python: no TensorFlow.
"""
from __future__ import annotations

from typing import List, Sequence

from pipeline.core import config as config_lib

BACKBONE_DEFAULTS = config_lib.BackboneConfig()
FRAME_FLAGS = ("min_side", "max_side", "max_pixels")


def flag_value(values: Sequence[float]) -> str:
  """The value of --scales or --ratios for `values`: comma-separated, %g."""
  return ",".join(f"{float(v):g}" for v in values)


def layer_flags(backbone: config_lib.BackboneConfig) -> List[str]:
  """--feature_layers for several levels, --feature_layer for one; nothing for
  the final output (rpn-preprocess's default)."""
  if len(backbone.feature_layers) > 1:
    return ["--feature_layers", ",".join(backbone.feature_layers)]
  return ["--feature_layer", backbone.feature_layer] if backbone.feature_layer else []


def frame_flags(backbone: config_lib.BackboneConfig) -> List[str]:
  """The resize flags whose values differ from rpn-preprocess's defaults."""
  flags = []
  for name in FRAME_FLAGS:
    value = getattr(backbone, name)
    if value != getattr(BACKBONE_DEFAULTS, name):
      flags += [f"--{name}", str(value)]
  return flags


def recommended_flags(backbone: config_lib.BackboneConfig, scales: Sequence[float],
                      ratios: Sequence[float], flip: bool = True) -> List[str]:
  """rpn-preprocess's flags for the recommended setting: the backbone, its
  layer(s), the frame, the anchors (`scales`, `ratios`) and --flip."""
  return (["--backbone", backbone.backbone] + layer_flags(backbone) + frame_flags(backbone)
          + ["--scales", flag_value(scales), "--ratios", flag_value(ratios)]
          + (["--flip"] if flip else []))


def reasons(backbone: config_lib.BackboneConfig, layers_given: bool,
            suggested: dict, current: dict) -> List[str]:
  """One line per choice of recommended_flags, and one for what stays default."""
  levels = config_lib.levels(backbone)
  shown = ",".join(layer or "final output" for layer in levels)
  if layers_given:
    layer_line = f"feature layer(s) {shown}: as given"
  elif len(levels) > 1:
    layer_line = (f"feature layers {shown}: the backbone's recommended levels, one head for "
                  f"both; on held-out real photos two VGG16 levels gave AR@1000 0.235 against "
                  f"0.211 at block5_conv3 alone (BENCHMARKS.md section 16)")
  else:
    layer_line = (f"feature layer {shown}: the backbone's recommended layer (its finer layers "
                  f"have other channel counts, which one head cannot share yet)")
  cov_now, cov_new = current["coverage"]["inside"], suggested["coverage"]["inside"]
  anchor_line = (f"--scales/--ratios: the search's set for this data at these layers; "
                 f"coverage of the boxes at IoU 0.5 {cov_now['0.5']:.3f} -> {cov_new['0.5']:.3f}, "
                 f"at 0.7 {cov_now['0.7']:.3f} -> {cov_new['0.7']:.3f} against the "
                 f"given scales and ratios; as many of each as given unless --num_scales or "
                 f"--num_ratios ask otherwise (five scales covered more boxes of real photos "
                 f"and recalled fewer held-out ones, BENCHMARKS.md section 17)")
  frame = frame_flags(backbone)
  frame_line = (f"frame {' '.join(frame)}: as given" if frame else
                "no resize (the images at their own size): --min_side 600 --max_side 1000 "
                "moved held-out AR@1000 by -0.003 at 1.7x the preprocessing time "
                "(BENCHMARKS.md section 14)")
  flip_line = ("--flip: every training image also mirrored; held-out R@1000 at IoU 0.5 "
               "0.528 -> 0.565 and AR@1000 0.235 -> 0.246 with two levels (BENCHMARKS.md "
               "section 16), at twice the preprocessing and training time; on the held-out "
               "split it only adds mirrored images to the validation loss")
  defaults_line = ("left at the defaults, as measured: the tiles layout, positives from IoU "
                   "0.7 (0.5 added nothing with two levels), rpn-train's 10 epochs without "
                   "weight decay or dropout, rpn-propose's --min_size 16 (0 finds small objects "
                   "twice as well at a lower AR@1000) and --nms_thresh 0.7 (BENCHMARKS.md "
                   "sections 14, 15 and 17)")
  return [layer_line, anchor_line, frame_line, flip_line, defaults_line]
