"""Reading and checking the manifest and shards written by rpn-preprocess.

Everything the trainer knows about the data (channels, dtype, compression,
anchors, backbone) comes from manifest.json, never from flags that could
disagree. Errors name the file and what is wrong.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Tuple

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("backbone", "weights", "feature_channels", "tile_size", "dtype", "compression",
                 "anchor", "targets", "num_shards", "shard_files", "counts")
# Keys that must agree between the manifests of data used together.
COMPATIBLE_KEYS = ("backbone", "weights", "weights_seed", "feature_channels", "tile_size",
                   "anchor", "stride_mode", "resize", "min_input_side")


class ManifestError(ValueError):
  """A manifest or shard directory that cannot be used, with the file named."""


def load_manifest(data_dir: str) -> Dict:
  """The checked manifest of a shard directory (local or gs://)."""
  import tensorflow as tf
  path = os.path.join(data_dir, MANIFEST_NAME)
  if not tf.io.gfile.exists(path):
    raise ManifestError(f"{path}: not found; {data_dir} is not the output of a finished "
                        f"rpn-preprocess run (the manifest is written last)")
  try:
    with tf.io.gfile.GFile(path) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ManifestError(f"{path}: not valid JSON ({e})") from e
  missing = [k for k in REQUIRED_KEYS if k not in manifest]
  if missing:
    raise ManifestError(f"{path}: missing keys {missing}")
  if manifest["dtype"] not in ("float32", "float16"):
    raise ManifestError(f"{path}: dtype {manifest['dtype']!r} is neither float32 nor float16")
  if manifest["compression"] not in ("NONE", "GZIP"):
    raise ManifestError(f"{path}: compression {manifest['compression']!r} is neither NONE nor GZIP")
  files = list(manifest["shard_files"])
  if len(files) != manifest["num_shards"]:
    raise ManifestError(f"{path}: lists {len(files)} shard files but num_shards is "
                        f"{manifest['num_shards']}")
  for name in files:
    if not tf.io.gfile.exists(os.path.join(data_dir, name)):
      raise ManifestError(f"{os.path.join(data_dir, name)}: shard listed in {path} is missing")
  present = {os.path.basename(p) for p in tf.io.gfile.glob(os.path.join(data_dir, "tiles-*"))}
  stale = sorted(present - set(files))
  if stale:
    raise ManifestError(f"{data_dir}: shard files not in {path} (from another run?): {stale}")
  manifest["_dir"] = data_dir
  return manifest


def shard_paths(manifest: Dict) -> List[str]:
  return [os.path.join(manifest["_dir"], name) for name in manifest["shard_files"]]


def check_compatible(reference: Dict, other: Dict, what: str = "data") -> None:
  """Raises ManifestError naming the first key on which two manifests disagree."""
  for key in COMPATIBLE_KEYS:
    if reference.get(key) != other.get(key):
      raise ManifestError(
          f"{other.get('_dir', what)}: {what} has {key} = {other.get(key)!r} but the model "
          f"was made for {key} = {reference.get(key)!r} ({reference.get('_dir', 'reference')})")


def scan_shard(path: str, compression: str, verify_payload: bool = False) -> Tuple[int, str]:
  """(records, problem) of one TFRecord file, checking its framing record by record.

  Reads each 12-byte header (length, masked crc32c of the length) and the
  payload's length, so a truncated or overwritten file is found without
  parsing it; verify_payload also checks each payload's crc32c (reads all).
  problem is "" for a sound file.
  """
  import gzip
  import tensorflow as tf
  from google_crc32c import value as crc32c

  def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  records = 0
  with tf.io.gfile.GFile(path, "rb") as raw:
    f = gzip.GzipFile(fileobj=raw) if compression == "GZIP" else raw
    try:
      while True:
        header = f.read(12)
        if not header:
          return records, ""
        if len(header) < 12:
          return records, f"truncated header after record {records}"
        length, length_crc = struct.unpack("<QI", header)
        if masked(header[:8]) != length_crc:
          return records, f"corrupt record header after record {records}"
        payload = f.read(length + 4)
        if len(payload) < length + 4:
          return records, f"truncated record {records} ({len(payload)} of {length + 4} bytes)"
        if verify_payload and masked(payload[:-4]) != struct.unpack("<I", payload[-4:])[0]:
          return records, f"corrupt record {records} (payload checksum mismatch)"
        records += 1
    except (OSError, EOFError) as e:  # gzip errors
      return records, f"unreadable after record {records}: {e}"


def check_shards(manifest: Dict, skip_corrupt: bool = False,
                 verify_payload: bool = False) -> Tuple[List[str], Dict]:
  """Scans every shard; returns (usable shard paths, report).

  A bad shard raises ManifestError naming it, unless skip_corrupt, when it is
  left out and reported. The record total must match the manifest's count.
  """
  from concurrent.futures import ThreadPoolExecutor
  paths = shard_paths(manifest)
  with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(
        lambda p: scan_shard(p, manifest["compression"], verify_payload), paths))
  bad = {p: problem for p, (_, problem) in zip(paths, results) if problem}
  if bad and not skip_corrupt:
    path, problem = next(iter(bad.items()))
    raise ManifestError(f"{path}: {problem} (pass --skip_corrupt_shards to train without it)")
  total = sum(n for _, (n, _) in zip(paths, results))
  expected = manifest["counts"].get("records")
  if not bad and expected is not None and total != expected:
    raise ManifestError(f"{manifest['_dir']}: shards hold {total} records, "
                        f"manifest.json says {expected}")
  good = [p for p in paths if p not in bad]
  return good, {"shards": len(paths), "shards_skipped": sorted(bad), "records": total,
                "problems": bad}
