"""Running rpn-preprocess in tests and reading back what it wrote."""
from __future__ import annotations

import collections
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.model import registry
from tests import reference

TINY = registry.TINY_BACKBONE
# In-process DirectRunner: rpn-preprocess without --direct_* options would
# start one worker process per core.
IN_PROCESS = ("--runner=DirectRunner", "--direct_running_mode=in_memory")


def preprocess(input_root: str, output: str, split: str = "DET/train",
               extra: Sequence[str] = (), runner_args: Sequence[str] = IN_PROCESS,
               num_shards: int = 2) -> manifest_lib.Manifest:
  """rpn-preprocess with the tiny Keras backbone; returns the manifest."""
  return preprocess_result(input_root, output, split, extra, runner_args, num_shards).manifest


def preprocess_result(input_root: str, output: str, split: str = "DET/train",
                      extra: Sequence[str] = (), runner_args: Sequence[str] = IN_PROCESS,
                      num_shards: int = 2):
  """preprocess(), returning the manifest and the run's Beam metrics (PreprocessResult)."""
  from pipeline.commands import preprocess as run
  return run.run(["--input", input_root, "--split", split, "--output", output,
                  "--backbone", TINY, "--weights", "none", "--num_shards", str(num_shards),
                  *extra, *runner_args])


def read_records(output: str, prefix: str = "tiles") -> List[bytes]:
  """Every serialized Example in the `prefix` shards of `output` (compression
  from the manifest)."""
  import tensorflow as tf
  manifest = manifest_lib.Manifest.read(os.path.join(output, "manifest.json"))
  files = sorted(glob.glob(os.path.join(output, prefix + "-*")))
  return [r.numpy() for r in tf.data.TFRecordDataset(
      files, compression_type=manifest.tfrecord_compression)]


def read_jsonl(path: str) -> List[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_proposals(directory: str) -> List[dict]:
  """The lines of an rpn-propose output's proposal shards, in image id order."""
  from trainer import settings
  return sorted((line for path in settings.proposal_files(directory)
                 for line in read_jsonl(path)), key=lambda line: line["image_id"])


def decode_record(serialized: bytes, channels, dtype: str = "float32") -> dict:
  """A tiles record's fields; `channels` is C, or each level's C (manifest
  level_channels), the tile then of its level's."""
  import tensorflow as tf
  feature = tf.train.Example.FromString(serialized).features.feature
  level = int(feature["level"].int64_list.value[0]) if "level" in feature else 0
  if isinstance(channels, (list, tuple)):
    channels = channels[level]
  return {
      "tile": np.frombuffer(feature["tile"].bytes_list.value[0],
                            np.dtype(dtype).newbyteorder("<")).reshape(3, 3, channels),
      "labels": np.array(feature["labels"].int64_list.value),
      "deltas": np.array(feature["deltas"].float_list.value, np.float32),
      "image_id": feature["image_id"].bytes_list.value[0].decode(),
      "location": tuple(feature["location"].int64_list.value),
      # records of several feature levels carry theirs; others are of level 0
      "level": level,
      "has_level": "level" in feature,
  }


def level_windows(root: str, records: List[dict], image_id: str, backbone: str,
                  feature_layers: Sequence[str], tolerance: float) -> list:
  """Asserts that every decoded tiles record of image `image_id` (its JPEG
  under root/Data/DET/train) is the zero-padded 3x3 window of its own
  level's map at its location, within `tolerance`; returns the image's maps
  (random weights, seed 0) and those records, for further checks."""
  from pipeline.io import images as images_lib
  from pipeline.model import extractor as extractor_lib
  extractor = extractor_lib.FeatureExtractor(backbone, "none", seed=0,
                                             feature_layers=tuple(feature_layers))
  with open(os.path.join(root, "Data/DET/train", image_id + ".JPEG"), "rb") as f:
    maps = extractor(images_lib.decode_image(f.read()))
  padded = [np.pad(m, ((1, 1), (1, 1), (0, 0))) for m in maps]
  mine = [r for r in records if r["image_id"] == image_id]
  for record in mine:
    y, x = record["location"]
    np.testing.assert_allclose(record["tile"], padded[record["level"]][y:y + 3, x:x + 3],
                               rtol=tolerance, atol=tolerance)
  return maps, mine


def check_records_follow_conventions(output: str) -> Dict[str, int]:
  """Asserts every record agrees with DESIGN.md; returns per-image record counts."""
  manifest = manifest_lib.Manifest.read(os.path.join(output, "manifest.json"))
  images = {line["image_id"]: line for line in read_jsonl(os.path.join(output, "images.jsonl"))}
  per_image, per_level = collections.Counter(), collections.Counter()
  fg, bg = collections.Counter(), collections.Counter()
  seen = set()
  for serialized in read_records(output):
    record = decode_record(serialized, manifest.feature_channels, manifest.dtype)
    key = (record["image_id"], record["level"], record["location"])
    assert key not in seen, f"duplicated point {key}"
    seen.add(key)
    image_line = images[record["image_id"]]
    # the map and strides of the record's level (several levels: the line's "levels")
    assert record["has_level"] == ("levels" in image_line) == (manifest.num_levels > 1)
    line = dict(image_line, **(image_line["levels"][record["level"]]
                               if "levels" in image_line else {}))
    y, x = record["location"]
    assert 0 <= y < line["feature_height"] and 0 <= x < line["feature_width"]
    labels, deltas = record["labels"], record["deltas"].reshape(9, 4)
    assert set(labels.tolist()) <= {-1, 0, 1} and (labels != -1).any()
    gt = line["gt_boxes"]
    for a in range(9):
      box = reference.anchor_box(y, x, a, line["stride_x"], line["stride_y"])
      # DESIGN.md inside rule, with anchors.py's 1e-9 relative tolerance for float error.
      tol_x, tol_y = 1e-9 * line["width"], 1e-9 * line["height"]
      inside = (box[0] >= -tol_x and box[1] >= -tol_y and box[2] <= line["width"] + tol_x
                and box[3] <= line["height"] + tol_y)
      if labels[a] != -1:
        assert inside, f"sampled anchor outside the image: {key} a={a} {box}"
      if labels[a] == 0:
        assert all(reference.iou(box, g) < 0.3 for g in gt), (
            f"negative with IoU >= 0.3: {key} a={a}")
        bg[record["image_id"]] += 1
      if labels[a] == 1:
        fg[record["image_id"]] += 1
        # Undo the delta encoding by hand (no clamp): the anchor moves onto a gt box.
        decoded = reference.decode(box, deltas[a])
        assert any(np.allclose(decoded, g, atol=1e-2) for g in gt), f"{key} a={a}: {decoded}"
        assert max(reference.iou(box, g) for g in gt) > 0
      else:
        assert (deltas[a] == 0).all()
    per_image[record["image_id"]] += 1
    per_level[record["image_id"], record["level"]] += 1
  for image_id, line in images.items():
    assert per_image[image_id] == line["num_locations"]
    for level, entry in enumerate(line.get("levels", [])):
      assert per_level[image_id, level] == entry["num_locations"], (image_id, level)
    assert fg[image_id] == line["num_fg"] <= 128
    assert bg[image_id] == line["num_bg"]
    assert line["num_fg"] + line["num_bg"] <= 256
    if not line["gt_boxes"]:
      assert line["num_fg"] == 0
  return dict(per_image)


def image_ids_on_disk(images_dir: str) -> List[str]:
  """The ids of the image files under images_dir (relative path, no extension)."""
  ids = []
  for folder, _, names in os.walk(images_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(folder, name), images_dir)
      ids.append(os.path.splitext(rel)[0].replace(os.sep, "/"))
  return ids


def check_accounting(output: str, manifest: manifest_lib.Manifest,
                     images_dir: Optional[str] = None) -> None:
  """images_found == ok + failed + skipped; records equal the Examples in the shards;
  images.jsonl and errors.jsonl name every image once (with images_dir: exactly
  the image files found there by os.walk, independently of the pipeline)."""
  counts = manifest.counts
  assert counts["images_found"] == (counts["images_ok"] + counts["images_failed"]
                                    + counts["images_skipped"]), counts
  prefix = config.shard_prefix(manifest.layout)
  assert counts["records"] == len(read_records(output, prefix))
  images = read_jsonl(os.path.join(output, "images.jsonl"))
  errors = read_jsonl(os.path.join(output, "errors.jsonl"))
  # --flip: the mirrored copies are lines of their own, not inputs
  flipped = [line for line in images if line["image_id"].endswith(config.FLIP_SUFFIX)]
  images = [line for line in images if line not in flipped]
  assert len(flipped) == counts.get("flipped_ok", 0)
  assert {line["image_id"] for line in flipped} <= {
      line["image_id"] + config.FLIP_SUFFIX for line in images}
  assert len(images) == counts["images_ok"]
  image_errors = [e for e in errors if e["outcome"] in ("failed", "skipped")]
  assert len(image_errors) == counts["images_failed"] + counts["images_skipped"]
  named = [line["image_id"] for line in images] + [e["image_id"] for e in image_errors]
  assert len(named) == len(set(named)) == counts["images_found"]
  if images_dir is not None:
    assert sorted(named) == sorted(image_ids_on_disk(images_dir))
  for error in errors:
    assert error["path"] and error["stage"] and error["reason"]
  shard_names = sorted(os.path.basename(p)
                       for p in glob.glob(os.path.join(output, prefix + "-*")))
  assert shard_names == list(manifest.shard_files)


def errors_of(output: str) -> List[tuple]:
  """errors.jsonl as sorted (path, stage, reason) triples."""
  return sorted((e["path"], e["stage"], e["reason"])
                for e in read_jsonl(os.path.join(output, "errors.jsonl")))


def images_of(output: str) -> List[dict]:
  """images.jsonl lines sorted by image id."""
  return sorted(read_jsonl(os.path.join(output, "images.jsonl")),
                key=lambda line: line["image_id"])


def check_same_output(reference_output: str, output: str, manifest: manifest_lib.Manifest,
                      images_dir: str):
  """`output` (with its manifest) is complete and holds what `reference_output`
  holds, by the determinism contract (pipeline/io/determinism.py): the same
  records, images.jsonl and errors.jsonl, the features byte for byte when one
  thread count computed both, else within the tolerance. Returns the comparison."""
  from pipeline.io import determinism
  check_accounting(output, manifest, images_dir)
  result = determinism.compare(reference_output, output)
  assert result.ok, result.problems
  assert result.records == manifest.counts["records"]
  return result
