"""Reading and checking manifest.json of a shard directory written by rpn-preprocess.

Everything the trainer knows about the data (channels, dtype, compression,
anchors, backbone) comes from the manifest, never from flags that could
disagree. Every error is a ManifestError naming the file and what is wrong.
Paths go through tf.io.gfile, so gs:// works.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from pipeline import config
from pipeline import schema

REQUIRED_KEYS = ("version", "backbone", "weights", "feature_channels", "tile_size", "dtype",
                 "compression", "anchor", "targets", "num_shards", "shard_files", "counts")
COMPRESSIONS = ("NONE", "GZIP")
# Keys that must agree between manifests of data used with one model (the
# tile dtype may differ: tiles are widened to float32 when read).
COMPATIBLE_KEYS = ("backbone", "weights", "weights_seed", "feature_channels", "tile_size",
                   "anchor", "stride_mode", "resize")


class ManifestError(ValueError):
  """A manifest or shard directory that cannot be used; the message names the file."""


def manifest_path(data_dir: str) -> str:
  return os.path.join(data_dir, config.MANIFEST_NAME)


def shard_paths(data_dir: str, manifest: Dict) -> List[str]:
  """The manifest's shard files as paths under data_dir."""
  return [os.path.join(data_dir, name) for name in manifest["shard_files"]]


def load_manifest(data_dir: str) -> Dict:
  """The manifest of a shard directory (local or gs://), checked against the files."""
  import tensorflow as tf
  path = manifest_path(data_dir)
  if not tf.io.gfile.exists(path):
    raise ManifestError(f"{path}: not found; {data_dir} is not the output of a finished "
                        f"rpn-preprocess run (the manifest is written last)")
  try:
    with tf.io.gfile.GFile(path) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ManifestError(f"{path}: not valid JSON ({e})") from e
  validate(manifest, path)
  listed = manifest["shard_files"]
  for name in listed:
    if not tf.io.gfile.exists(os.path.join(data_dir, name)):
      raise ManifestError(f"{os.path.join(data_dir, name)}: shard listed in {path} is missing")
  present = {os.path.basename(p)
             for p in tf.io.gfile.glob(os.path.join(data_dir, config.SHARD_PREFIX + "-*"))}
  stale = sorted(present - set(listed))
  if stale:
    raise ManifestError(f"{data_dir}: shard files not listed in {path} (stale, from another "
                        f"run? remove them): {stale}")
  return manifest


def validate(manifest: Dict, path: str) -> None:
  """Checks keys and values of a manifest dict; `path` names it in errors."""
  if not isinstance(manifest, dict):
    raise ManifestError(f"{path}: not a JSON object")
  missing = [k for k in REQUIRED_KEYS if k not in manifest]
  if missing:
    raise ManifestError(f"{path}: missing keys {missing}")
  if manifest["version"] != config.MANIFEST_VERSION:
    raise ManifestError(f"{path}: version {manifest['version']!r}, this trainer reads "
                        f"version {config.MANIFEST_VERSION}")
  if manifest["dtype"] not in schema.TILE_DTYPES:
    raise ManifestError(f"{path}: dtype {manifest['dtype']!r} not in {schema.TILE_DTYPES}")
  if manifest["compression"] not in COMPRESSIONS:
    raise ManifestError(f"{path}: compression {manifest['compression']!r} not in {COMPRESSIONS}")
  if manifest["tile_size"] != schema.TILE_SIZE:
    raise ManifestError(f"{path}: tile_size {manifest['tile_size']!r}, the RPN head takes "
                        f"{schema.TILE_SIZE}x{schema.TILE_SIZE} tiles")
  if "num_anchors" not in manifest["anchor"]:
    raise ManifestError(f"{path}: anchor has no num_anchors: {manifest['anchor']!r}")
  files = manifest["shard_files"]
  if not isinstance(files, list) or len(files) != manifest["num_shards"]:
    raise ManifestError(f"{path}: shard_files lists {len(files)} files but num_shards is "
                        f"{manifest['num_shards']}")


def check_compatible(manifest_a: Dict, manifest_b: Dict, what: str = "data") -> None:
  """Raises ManifestError naming the first key on which two manifests disagree.

  `what` names manifest_b in the message ("--val_data", "the job's model").
  """
  for key in COMPATIBLE_KEYS:
    if manifest_a.get(key) != manifest_b.get(key):
      raise ManifestError(
          f"{what}: {key} is {manifest_b.get(key)!r} where the other manifest has "
          f"{manifest_a.get(key)!r}; features of different {key} do not mix")
