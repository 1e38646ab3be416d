"""The anchors and targets rpn-train draws a maps dataset with, without TensorFlow.

A maps dataset holds each image's feature map; rpn-train labels and samples
the anchors itself, afresh every epoch, with the anchors and target settings
resolved here: the flags given (SamplingFlags), else --anchors_json's
suggestion (rpn-anchors' report), else the manifest's (the method's). A tiles
dataset's anchors and targets were fixed by rpn-preprocess: flags for them
are refused. Mistakes are cli.UsageErrors naming the flag.

Units: scales in units of the feature stride, ratios height / width, IoU
thresholds in [0, 1], batch_size_per_image anchors per image and epoch.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from pipeline.commands import cli
from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import storage
from trainer.arguments import Sampling


@dataclasses.dataclass(frozen=True)
class SamplingFlags:
  """rpn-train's anchor and target flags, None where not given."""
  scales: Optional[Tuple[float, ...]] = None
  ratios: Optional[Tuple[float, ...]] = None
  fg_iou_thresh: Optional[float] = None
  bg_iou_thresh: Optional[float] = None
  batch_size_per_image: Optional[int] = None
  fg_fraction: Optional[float] = None
  anchors_json: Optional[str] = None  # rpn-anchors' anchors.json

  def given(self) -> Optional[str]:
    """The first flag given, e.g. "--scales"; None when none is."""
    for field in dataclasses.fields(self):
      if getattr(self, field.name) is not None:
        return "--" + field.name
    return None


# The target flags and the TargetConfig fields they set
_TARGET_FIELDS = (("fg_iou_thresh", "fg_iou_thresh"), ("bg_iou_thresh", "bg_iou_thresh"),
                  ("batch_size_per_image", "batch_size"), ("fg_fraction", "fg_fraction"))


def read_anchors_json(path: str, manifest: manifest_lib.Manifest) -> Dict:
  """rpn-anchors' anchors.json at `path`, made for the data's backbone, layer
  and frame; returns its "suggested" block. A cli.UsageError otherwise."""
  if not storage.exists(path):
    raise cli.UsageError("--anchors_json", path, "no such file")
  try:
    report = storage.read_json(path)
    suggested = report["suggested"]
    [float(v) for v in suggested["scales"]], [float(v) for v in suggested["ratios"]]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError):
    raise cli.UsageError("--anchors_json", path, "not the anchors.json of rpn-anchors (no "
                         "suggested scales and ratios)") from None
  frame = report.get("frame") or {}
  for key, theirs, ours in (
      ("backbone", report.get("backbone"), manifest.backbone),
      ("feature_layer", report.get("feature_layer"), manifest.feature_layer),
      ("feature_layers", report.get("feature_layers"), manifest.feature_layers),
      ("min_side", frame.get("min_side"), manifest.resize.min_side),
      ("max_side", frame.get("max_side"), manifest.resize.max_side)):
    if theirs != ours:
      raise cli.UsageError("--anchors_json", path, f"was made for {key} {theirs!r}, the data "
                           f"has {ours!r}: run rpn-anchors with the data's settings")
  return suggested


def resolve_sampling(flags: SamplingFlags, manifest: manifest_lib.Manifest, seed: int) -> Sampling:
  """The anchors and targets to draw a maps dataset with: the flags given,
  --anchors_json's suggestion, else the manifest's (the method's); `seed`
  seeds the sampling."""
  anchors, target_config = manifest_sampling(manifest, int(seed))
  if flags.anchors_json:
    suggested = read_anchors_json(flags.anchors_json, manifest)
    anchors = config.AnchorConfig(tuple(float(v) for v in suggested["scales"]),
                                  tuple(float(v) for v in suggested["ratios"]))
  given = {"scales": flags.scales, "ratios": flags.ratios}
  anchors = dataclasses.replace(anchors, **{name: tuple(float(v) for v in value)
                                            for name, value in given.items() if value is not None})
  given = {field: getattr(flags, flag) for flag, field in _TARGET_FIELDS}
  target_config = dataclasses.replace(target_config, **{
      field: value for field, value in given.items() if value is not None})
  return anchors, target_config


def check_sampling(flags: SamplingFlags, manifest: manifest_lib.Manifest, seed: int, data: str
                   ) -> Optional[Sampling]:
  """The anchor and target flags against the layout of `data` (whose manifest
  is `manifest`): refused on tiles data (fixed at preprocessing), checked on
  maps; returns the maps sampling (resolve_sampling), None for tiles."""
  if not manifest.is_maps:
    given = flags.given()
    if given:
      value = getattr(flags, given[2:])
      shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
      raise cli.UsageError(given, shown, f"--data {data} is of layout "
                           f"tiles, whose anchors and targets were fixed by rpn-preprocess; "
                           f"preprocess with --layout maps to choose them at training")
    return None
  anchors, target_config = resolve_sampling(flags, manifest, seed)
  try:  # the ranges rpn-preprocess checks too
    anchors.validate()
    target_config.validate()
  except config.ConfigError as e:
    flag = "batch_size_per_image" if e.field == "batch_size" else e.field
    raise cli.UsageError(f"--{flag}", e.value, e.problem) from None
  return anchors, target_config


def manifest_sampling(manifest: manifest_lib.Manifest, seed: int) -> Sampling:
  """The anchors and targets a manifest records (a maps manifest's defaults, or
  a tiles dataset's, to draw maps validation data with), with rpn-train's
  sampling seed."""
  return (manifest.anchor_config, dataclasses.replace(manifest.target_config, seed=seed))


def data_sampling(manifest: manifest_lib.Manifest, sampling: Optional[Sampling], seed: int
                  ) -> Optional[Sampling]:
  """What train() draws the data of `manifest` with: `sampling` for maps data
  (the manifest's, seeded with `seed`, when None); None for tiles data, which
  takes none (ValueError when given)."""
  if not manifest.is_maps:
    if sampling is not None:
      raise ValueError("anchors and targets to draw with were given for tiles data, whose "
                       "anchors and targets were fixed by rpn-preprocess")
    return None
  return sampling or manifest_sampling(manifest, seed)


def training_manifest(manifest: manifest_lib.Manifest, sampling: Optional[Sampling]
                      ) -> manifest_lib.Manifest:
  """The manifest a model of this data is trained for: a maps manifest with
  the anchors and targets drawn at training (what the job dir records)."""
  if sampling is None:
    return manifest
  anchors, target_config = sampling
  return manifest.replaced(
      anchor=dict(config.to_dict(anchors), num_anchors=anchors.num_anchors),
      targets=config.to_dict(target_config),
      sampling="per epoch, seeded by (seed, epoch, image_id)")
