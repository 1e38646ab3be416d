"""What a rerun of rpn-preprocess reproduces, and a check of two outputs against it.

The contract (docs/DESIGN.md, "Determinism"): the same input, options
(`--seed` included) and software give

1. byte for byte, on every runner, number of worker processes, number of
   shards and backbone thread count: the record multiset's keys (image id, and
   location for tiles), every record field other than the features (labels,
   deltas; maps: feature_shape, image_size, gt_boxes), images.jsonl,
   errors.jsonl and the manifest's counts;
2. the features (`tile`, `feature_map`) byte for byte when the same number of
   TensorFlow intra-op threads computed them on the same kind of CPU with the
   same TensorFlow build (oneDNN is run-to-run deterministic for a fixed
   environment and thread count); the manifest's `backbone_threads` records
   the thread counts that computed the features;
3. otherwise the features within FEATURE_RTOL[dtype] times the largest
   |feature| of their image: oneDNN splits a convolution's sums by the thread
   count on some CPUs, so they round differently (one float32 ulp seen).

`compare(reference_dir, other_dir)` checks two finished outputs against each
line; `python -m pipeline.io.determinism REF OTHER` prints what it found (exit 1
on a difference). It holds both outputs' records in memory: meant for a
sample run of the same images (tests, a check of a new runner or machine).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema, storage

# Allowed difference of a feature value, relative to the largest |feature| of
# its image, between outputs computed with other thread counts or CPUs.
# float16 stores 11 significant bits: a float32 ulp of difference can round
# to the neighbouring float16 (2**-10 of the value at most).
FEATURE_RTOL = {"float32": 1e-4, "float16": 2e-3}
FEATURE_KEYS = (schema.TILE_KEY, schema.FEATURE_MAP_KEY)
# The manifest key: {"<intra-op threads>": images computed with that many}.
THREADS_KEY = "backbone_threads"
THREADS_COUNT_PREFIX = "backbone_threads="  # per-image counts in the pipeline's STATS


def threads_count(threads: int) -> Dict[str, int]:
  """The STATS entry of one image whose features `threads` threads computed."""
  return {f"{THREADS_COUNT_PREFIX}{int(threads)}": 1}


def pop_threads(counts: Dict[str, int]) -> Dict[str, int]:
  """Takes the per-thread-count entries out of `counts` (in place) and returns
  them as the manifest's backbone_threads ({"1": 13}), ordered by thread count."""
  found = {key[len(THREADS_COUNT_PREFIX):]: int(counts.pop(key))
           for key in [k for k in counts if k.startswith(THREADS_COUNT_PREFIX)]}
  return dict(sorted(found.items(), key=lambda item: int(item[0])))


def same_threads(reference: manifest_lib.Manifest, other: manifest_lib.Manifest) -> bool:
  """Whether both manifests' features came from one and the same thread count."""
  ours, theirs = reference.backbone_threads, other.backbone_threads
  return bool(ours) and bool(theirs) and len(ours) == 1 and set(ours) == set(theirs)


@dataclasses.dataclass
class Comparison:
  """What compare() found; `problems` empty means the contract holds."""
  records: int = 0
  features_identical: bool = True
  features_byte_identical_required: bool = False
  max_feature_difference: float = 0.0  # relative to the image's largest |feature|
  problems: List[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.problems


def _records(output: str, manifest: manifest_lib.Manifest) -> List[bytes]:
  import tensorflow as tf  # lazy: the pipeline imports this package without TensorFlow
  files = manifest.shard_paths(output)
  return [r.numpy() for r in tf.data.TFRecordDataset(
      files, compression_type=manifest.tfrecord_compression)]


def split_record(serialized: bytes) -> Tuple[Tuple, Dict[str, bytes], bytes]:
  """(key, the other fields as bytes, the feature bytes) of one record.

  The key is (image_id,) for a maps record, (image_id, y, x) for a tile, and
  (image_id, y, x, level) for a tile of several feature levels. The feature
  bytes of a maps record of several levels are its levels' maps in order."""
  from tensorflow.core.example import example_pb2  # lazy: as above
  feature = example_pb2.Example.FromString(serialized).features.feature
  key: Tuple = (feature[schema.IMAGE_ID_KEY].bytes_list.value[0].decode(),)
  if schema.LOCATION_KEY in feature:
    key += tuple(feature[schema.LOCATION_KEY].int64_list.value)
  if schema.LEVEL_KEY in feature:
    key += tuple(feature[schema.LEVEL_KEY].int64_list.value)
  features = b""
  others = {}
  for name in sorted(feature):
    if name in FEATURE_KEYS:
      features = b"".join(feature[name].bytes_list.value)
    else:
      others[name] = feature[name].SerializeToString(deterministic=True)
  return key, others, features


def _lines(output: str, name: str) -> List[str]:
  path = storage.join(output, name)
  if not storage.exists(path):
    return []
  return sorted(json.dumps(json.loads(line), sort_keys=True)
                for line in storage.read_text(path).splitlines() if line.strip())


def compare(reference_dir: str, other_dir: str, limit: int = 10) -> Comparison:
  """Checks `other_dir` against `reference_dir`, both finished rpn-preprocess
  outputs of the same input and options, line by line of the contract above.
  At most `limit` record problems are listed."""
  reference = manifest_lib.Manifest.load(reference_dir)
  other = manifest_lib.Manifest.load(other_dir)
  result = Comparison(features_byte_identical_required=same_threads(reference, other))
  problems = result.problems
  for key in ("layout", "dtype", "feature_channels", "level_channels"):
    if getattr(reference, key) != getattr(other, key):
      problems.append(f"manifest {key}: {getattr(reference, key)!r} != {getattr(other, key)!r}")
  if problems:
    return result
  if reference.counts != other.counts:
    changed = sorted(k for k in set(reference.counts) | set(other.counts)
                     if reference.counts.get(k) != other.counts.get(k))
    problems.append(f"manifest counts differ: {changed}")
  for name in (config.IMAGES_NAME, config.ERRORS_NAME):
    if _lines(reference_dir, name) != _lines(other_dir, name):
      problems.append(f"{name} differs")

  dtype = np.dtype(reference.dtype).newbyteorder("<")
  ours, theirs = ({}, {})
  for output, manifest, table in ((reference_dir, reference, ours), (other_dir, other, theirs)):
    for serialized in _records(output, manifest):
      key, fields, features = split_record(serialized)
      if key in table:
        problems.append(f"{output}: record {key} appears twice")
      table[key] = (fields, features)
  result.records = len(theirs)
  missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
  if missing:
    problems.append(f"{len(missing)} records missing, e.g. {missing[0]}")
  if extra:
    problems.append(f"{len(extra)} records not in the reference, e.g. {extra[0]}")

  by_image: Dict[str, List[Tuple]] = collections.defaultdict(list)
  listed = 0
  for key in sorted(set(ours) & set(theirs)):
    (fields, features), (other_fields, other_features) = ours[key], theirs[key]
    if fields != other_fields and listed < limit:
      changed = sorted(n for n in set(fields) | set(other_fields)
                       if fields.get(n) != other_fields.get(n))
      problems.append(f"record {key}: {', '.join(changed)} differ")
      listed += 1
    if features != other_features:
      result.features_identical = False
    by_image[key[0]].append((key, features, other_features))
  rtol = FEATURE_RTOL[reference.dtype]
  for _, entries in sorted(by_image.items()):
    first = [np.frombuffer(a, dtype).astype(np.float64) for _, a, _ in entries]
    second = [np.frombuffer(b, dtype).astype(np.float64) for _, _, b in entries]
    scale = max(max((np.abs(x).max(initial=0.0) for x in first), default=0.0),
                max((np.abs(x).max(initial=0.0) for x in second), default=0.0))
    for (key, _, _), x, y in zip(entries, first, second, strict=True):
      if x.shape != y.shape:
        problems.append(f"record {key}: {x.size} feature values against {y.size}")
        continue
      worst = float(np.abs(x - y).max(initial=0.0)) / scale if scale else 0.0
      result.max_feature_difference = max(result.max_feature_difference, worst)
      if worst > rtol and listed < limit:
        problems.append(f"record {key}: features differ by {worst:.3g} of the image's "
                        f"largest |feature| (allowed {rtol:g})")
        listed += 1
  if result.features_byte_identical_required and not result.features_identical:
    problems.append(f"features not byte-identical although one thread count "
                    f"({next(iter(reference.backbone_threads))}) computed both")
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.io.determinism",
      description="Check an rpn-preprocess output against a reference output of the "
                  "same input and options, by the determinism contract (docs/DESIGN.md).")
  parser.add_argument("reference", help="a finished rpn-preprocess output directory")
  parser.add_argument("other", help="another output of the same input and options")
  args = parser.parse_args(argv)
  try:
    result = compare(args.reference, args.other)
  except manifest_lib.ManifestError as e:
    print(f"python -m pipeline.io.determinism: error: {e}", file=sys.stderr)
    return 2
  how = ("byte-identical required (one thread count)" if result.features_byte_identical_required
         else f"tolerance {FEATURE_RTOL}")
  print(f"{result.records} records; features "
        f"{'byte-identical' if result.features_identical else 'not byte-identical'} "
        f"({how}); largest feature difference {result.max_feature_difference:.3g} "
        f"of the image's largest |feature|")
  for problem in result.problems:
    print(f"  {problem}")
  print("contract holds" if result.ok else "contract broken")
  return 0 if result.ok else 1


if __name__ == "__main__":
  sys.exit(main())
