"""manifest.json: one module writes it, reads it and checks it.

`rpn-preprocess` writes the manifest last, after every shard is in place, so
its presence marks a finished run. It holds everything needed to read the
shards (channels, dtype, compression, shard list with each shard's bytes and
records) and to reproduce them
(backbone, weights, anchors, targets, input). The trainer, `rpn-propose`,
`rpn-draw` and the demo read it through `load`, which fails with a
ManifestError naming the file and the problem.

Paths go through `pipeline.io.storage`, so gs:// and other remote paths work.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from pipeline.core import config
from pipeline.io import schema, storage

REQUIRED_KEYS = ("version", "backbone", "weights", "feature_channels", "tile_size", "dtype",
                 "compression", "anchor", "targets", "num_shards", "shard_files", "counts")
COMPRESSIONS = ("NONE", "GZIP")
# Keys that must agree between manifests of data used with one model (the
# tile dtype may differ: tiles are widened to float32 when read).
COMPATIBLE_KEYS = ("backbone", "feature_layer", "weights", "weights_seed", "feature_channels",
                   "tile_size",
                   "anchor", "stride_mode", "resize")
PADDING_NOTE = "small images padded with zeros at the bottom and right up to min_input_side"


class ManifestError(ValueError):
  """A manifest or shard directory that cannot be used; the message names the file."""


def shard_suffix(compression: str) -> str:
  return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def path_in(data_dir: str) -> str:
  return storage.join(data_dir, config.MANIFEST_NAME)


def build(cfg: config.PreprocessConfig, counts: Dict[str, int], shard_files: List[str],
          feature_channels: int, min_input_side: int,
          shards: Optional[List[Dict]] = None,
          backbone_threads: Optional[Dict[str, int]] = None) -> Dict:
  """The manifest of a finished run: `cfg`, the run's counts and its shard file names.

  `shards` ({"file", "bytes", "records"} of each shard, any order;
  pipeline.io.shards.describe_shard) become the "shards" key, in the order of
  shard_files; they must name the same files. `backbone_threads` ({"1": 13}:
  images whose features that many TensorFlow threads computed) says which
  runs' features are byte-identical (pipeline/io/determinism.py).
  """
  fmt = cfg.output_format
  num_shards = len(shard_files)
  manifest = {
      "version": config.MANIFEST_VERSION,
      "created_by": "rpn-preprocess",
      # maps: "anchor" and "targets" are rpn-train's defaults, not applied here
      "layout": fmt.layout,
      "backbone": cfg.backbone.backbone,
      # None: the backbone's final output
      "feature_layer": cfg.backbone.feature_layer,
      "weights": cfg.backbone.weights,
      "weights_seed": cfg.targets.seed,
      "feature_channels": feature_channels,
      "tile_size": schema.TILE_SIZE,
      "dtype": fmt.tile_dtype,
      "compression": fmt.compression,
      "anchor": dict(config.to_dict(cfg.anchors), num_anchors=cfg.anchors.num_anchors),
      "targets": config.to_dict(cfg.targets),
      "stride_mode": cfg.backbone.stride_mode,
      "resize": {"min_side": cfg.backbone.min_side, "max_side": cfg.backbone.max_side},
      "min_input_side": min_input_side,
      "padding": PADDING_NOTE,
      "max_pixels": cfg.backbone.max_pixels,
      "input": {"root": cfg.input_root, "split": cfg.split, "images": cfg.images_dir,
                "annotations": cfg.annotations_dir, "image_set": cfg.image_set,
                "missing_annotations": cfg.missing_annotations},
      "shard_pattern": f"{config.shard_prefix(fmt.layout)}-?????-of-{num_shards:05d}"
                       f"{shard_suffix(fmt.compression)}",
      "num_shards": num_shards,
      "max_shard_mb": fmt.max_shard_mb if fmt.num_shards == 0 else None,
      "records_shuffled": cfg.shuffle_records,
      "shard_files": sorted(shard_files),
      "counts": dict(sorted(counts.items())),
      "backbone_threads": dict(backbone_threads or {}),
  }
  if shards is not None:
    by_file = {shard["file"]: shard for shard in shards}
    if sorted(by_file) != manifest["shard_files"] or len(shards) != num_shards:
      raise ValueError(f"shard descriptions {sorted(s['file'] for s in shards)} do not match "
                       f"the shard files {manifest['shard_files']}")
    manifest["shards"] = [{"file": name, "bytes": int(by_file[name]["bytes"]),
                           "records": int(by_file[name]["records"])}
                          for name in manifest["shard_files"]]
  return manifest


def write(data_dir: str, manifest: Dict) -> None:
  """Writes DIR/manifest.json atomically (temp file and rename)."""
  storage.write_json(path_in(data_dir), manifest)


def read(path: str) -> Dict:
  """A manifest.json file (of a shard directory or a job directory), validated."""
  if not storage.exists(path):
    raise ManifestError(f"{path}: not found")
  try:
    manifest = storage.read_json(path)
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise ManifestError(f"{path}: not valid JSON ({e})") from None
  validate(manifest, path)
  return manifest


def load(data_dir: str) -> Dict:
  """The manifest of a shard directory, checked against the shard files present."""
  path = path_in(data_dir)
  if not storage.exists(path):
    raise ManifestError(f"{path}: not found; {data_dir} is not the output of a finished "
                        f"rpn-preprocess run (the manifest is written last)")
  manifest = read(path)
  listed = manifest["shard_files"]
  for shard in shard_paths(data_dir, manifest):
    if not storage.exists(shard):
      raise ManifestError(f"{shard}: shard listed in {path} is missing")
  prefix = config.shard_prefix(layout(manifest))
  present = {os.path.basename(p)
             for p in storage.glob(storage.join(data_dir, prefix + "-*"))}
  stale = sorted(present - set(listed))
  if stale:
    raise ManifestError(f"{data_dir}: shard files not listed in {path} (stale, from another "
                        f"run? remove them): {stale}")
  for other in config.LAYOUTS:
    foreign = storage.glob(storage.join(data_dir, config.shard_prefix(other) + "-*"))
    if other != layout(manifest) and foreign:
      raise ManifestError(
          f"{data_dir}: mixed layouts: {path} is of layout {layout(manifest)!r} but "
          f"{os.path.basename(sorted(foreign)[0])} is a shard of layout {other!r} (and "
          f"{len(foreign) - 1} more); remove them, or write each layout to its own directory")
  return manifest


def layout(manifest: Dict) -> str:
  """The manifest's layout: "tiles" (the method; also every manifest before 0.6.0) or "maps"."""
  return manifest.get("layout", config.TILES_LAYOUT)


def shard_paths(data_dir: str, manifest: Dict) -> List[str]:
  """The manifest's shard files as paths under data_dir."""
  return [storage.join(data_dir, name) for name in manifest["shard_files"]]


def shard_info(manifest: Dict) -> Optional[List[Dict]]:
  """The "shards" entries ({"file", "bytes", "records"}, in shard_files order), or None
  for a manifest written before rpn-preprocess recorded them."""
  return manifest.get("shards")


def num_anchors(manifest: Dict) -> int:
  """A, the anchors per feature-map point."""
  return int(manifest["anchor"]["num_anchors"])


def validate(manifest: Dict, path: str) -> None:
  """Checks keys and values of a manifest dict; `path` names it in errors."""
  if not isinstance(manifest, dict):
    raise ManifestError(f"{path}: not a JSON object")
  missing = [k for k in REQUIRED_KEYS if k not in manifest]
  if missing:
    raise ManifestError(f"{path}: missing keys {missing}")
  if manifest["version"] != config.MANIFEST_VERSION:
    raise ManifestError(f"{path}: version {manifest['version']!r}, this code reads "
                        f"version {config.MANIFEST_VERSION}")
  if manifest["dtype"] not in schema.TILE_DTYPES:
    raise ManifestError(f"{path}: dtype {manifest['dtype']!r} not in {schema.TILE_DTYPES}")
  if manifest["compression"] not in COMPRESSIONS:
    raise ManifestError(f"{path}: compression {manifest['compression']!r} not in {COMPRESSIONS}")
  if manifest["tile_size"] != schema.TILE_SIZE:
    raise ManifestError(f"{path}: tile_size {manifest['tile_size']!r}, the RPN head takes "
                        f"{schema.TILE_SIZE}x{schema.TILE_SIZE} tiles")
  anchor = manifest["anchor"]
  if not isinstance(anchor, dict) or "num_anchors" not in anchor:
    raise ManifestError(f"{path}: anchor has no num_anchors: {anchor!r}")
  if "scales" in anchor and "ratios" in anchor and (
      int(anchor["num_anchors"]) != len(anchor["scales"]) * len(anchor["ratios"])):
    raise ManifestError(f"{path}: anchor num_anchors {anchor['num_anchors']} != "
                        f"{len(anchor['scales'])} scales x {len(anchor['ratios'])} ratios")
  files = manifest["shard_files"]
  if not isinstance(files, list) or len(files) != manifest["num_shards"]:
    raise ManifestError(f"{path}: shard_files lists {len(files)} files but num_shards is "
                        f"{manifest['num_shards']}")
  if layout(manifest) not in config.LAYOUTS:
    raise ManifestError(f"{path}: layout {manifest['layout']!r} not in {config.LAYOUTS}")
  prefix = config.shard_prefix(layout(manifest)) + "-"
  wrong = [name for name in files if not str(name).startswith(prefix)]
  if wrong:
    raise ManifestError(f"{path}: layout {layout(manifest)!r} but shard file {wrong[0]!r} "
                        f"does not start with {prefix!r}")
  _validate_shards(manifest, path)


def _validate_shards(manifest: Dict, path: str) -> None:
  """The optional "shards" key: one {"file", "bytes", "records"} per shard_files entry."""
  if "shards" not in manifest:
    return
  shards, files = manifest["shards"], manifest["shard_files"]
  if not isinstance(shards, list) or len(shards) != len(files):
    raise ManifestError(f"{path}: shards must list one entry per shard file "
                        f"({len(files)}), not {shards!r:.200}")
  for i, (shard, name) in enumerate(zip(shards, files, strict=True)):
    sound = (isinstance(shard, dict) and shard.get("file") == name
             and all(isinstance(shard.get(k), int) and not isinstance(shard.get(k), bool)
                     and shard[k] >= 0 for k in ("bytes", "records")))
    if not sound:
      raise ManifestError(f"{path}: shards[{i}] is {shard!r:.200}, expected "
                          f"{{'file': {name!r}, 'bytes': int, 'records': int}}")


def check_compatible(manifest_a: Dict, manifest_b: Dict, what: str = "data") -> None:
  """Raises ManifestError naming the first key on which two manifests disagree.

  `what` names manifest_b in the message ("--val_data", "the job's model").
  """
  for key in COMPATIBLE_KEYS:
    if manifest_a.get(key) != manifest_b.get(key):
      raise ManifestError(
          f"{what}: {key} is {manifest_b.get(key)!r} where the other manifest has "
          f"{manifest_a.get(key)!r}; features of different {key} do not mix")


def max_pixels(manifest: Dict) -> int:
  """The decompression-bomb limit the run used (older manifests: the default)."""
  return int(manifest.get("max_pixels") or config.DEFAULT_MAX_PIXELS)


def resize(manifest: Dict) -> Dict[str, Optional[int]]:
  return manifest.get("resize") or {"min_side": None, "max_side": None}
