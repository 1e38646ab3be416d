"""Child: backbone floor, targets cost and bytes, on the same images, in one process.

    python -m bench.features --input ROOT [--bytes_images 64] --result FILE

1. Floor: the bare backbone forward pass (plain Keras InceptionResNetV2 in one
   tf.function, input_signature [1, None, None, 3], traced once) over the
   pre-decoded images, after a warm-up; images/s and ms per image. Optionally
   the product's FeatureExtractor on the same images, for comparison.
2. Targets: compute_targets + extract_tiles + make_example for every sampled
   point, on those real 1536-channel feature maps, timed per stage.
3. Bytes: the same records written with tf.io.TFRecordWriter as float32 and
   float16 tiles, with and without GZIP, on the first --bytes_images images.

TensorFlow and Keras are imported where they are used, not at the top: main
times their import (tf_import_s) once the images are decoded.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

PROCESS_START = time.monotonic()

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from pipeline.core import config as config_lib  # noqa: E402
from pipeline.core import frame as frame_lib  # noqa: E402
from pipeline.core import targets  # noqa: E402
from pipeline.io import ilsvrc, schema  # noqa: E402
from pipeline.model import extractor as extractor_lib  # noqa: E402
from pipeline.model import registry  # noqa: E402


def load_images(root: str, limit: int = 0):
  """Decoded images exactly as LoadImageFn prepares them (decode, boxes, padding)."""
  cfg = config_lib.BackboneConfig(backbone="InceptionResNetV2", weights="none")
  spec = registry.backbone_spec(cfg.backbone)
  examples = common.list_examples(root)
  if limit:
    examples = examples[:limit]
  loaded, decode_s = [], []
  for e in examples:
    start = time.perf_counter()
    image, boxes, _, _ = ilsvrc.load_example(e["image_path"], e["annotation_path"], cfg.max_pixels)
    image, boxes, _ = frame_lib.prepare_image(image, boxes, spec.min_input_side, cfg.min_side,
                                             cfg.max_side)
    decode_s.append(time.perf_counter() - start)
    loaded.append((e["image_id"], image, boxes))
  return loaded, decode_s


def bare_forward(seed: int = 0):
  """The floor's own forward function: plain Keras + one tf.function, nothing else.

  Same net, weights (seeded random init) and preprocessing as the pipeline's
  FeatureExtractor, written independently so that the floor does not inherit
  any cost of the product's wrapper.
  """
  import keras  # lazily: see the module doc
  import tensorflow as tf
  from keras.applications import inception_resnet_v2

  keras.utils.set_random_seed(seed)
  model = keras.applications.InceptionResNetV2(include_top=False, weights=None,
                                               input_shape=(None, None, 3))
  traces = []

  @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
  def forward(images):
    traces.append(1)
    return model(inception_resnet_v2.preprocess_input(tf.cast(images, tf.float32)),
                 training=False)

  def call(image):
    return forward(image[np.newaxis]).numpy()[0]
  call.traces = traces
  return call


def time_forward(forward, loaded, warmup: int, traces):
  """Times the forward pass of every image (after `warmup` untimed images)."""
  for _, image, _ in loaded[:warmup]:
    forward(image)
  traces_after_warmup = traces()
  feature_maps, seconds = [], []
  cpu_start = time.process_time()
  system_start = common.system_cpu_seconds()
  for _, image, _ in loaded:
    start = time.perf_counter()
    fmap = forward(image)
    seconds.append(time.perf_counter() - start)
    feature_maps.append(fmap)
  cpu_s = time.process_time() - cpu_start
  system_s = common.system_cpu_seconds() - system_start
  total = sum(seconds)
  return feature_maps, {
      "other_cores_busy": max(system_s - cpu_s, 0.0) / total,
      "cpu_s_per_image": cpu_s / len(loaded),
      "cores_busy": cpu_s / total,
      "images": len(loaded),
      "warmup_images": warmup,
      "seconds": round(total, 3),
      "images_per_s": len(loaded) / total,
      "ms_per_image_mean": 1000 * total / len(loaded),
      "ms_per_image_median": 1000 * common.percentile(seconds, 50),
      "ms_per_image_p90": 1000 * common.percentile(seconds, 90),
      "traces": traces(),
      "retraces_during_timing": traces() - traces_after_warmup,
  }


def targets_cost(loaded, feature_maps, tile_dtype: str = "float32", writers=None):
  """Per-stage seconds of compute_targets, extract_tiles, make_example over every image."""
  anchors, target_cfg = config_lib.AnchorConfig(), config_lib.TargetConfig()
  stage = {"compute_targets": 0.0, "extract_tiles": 0.0, "make_example": 0.0}
  per_image = []
  sampled = distinct = fg = bg = records_bytes = 0
  dtype = np.dtype(tile_dtype)
  for (image_id, image, boxes), fmap in zip(loaded, feature_maps, strict=True):
    height, width = image.shape[:2]
    fh, fw = fmap.shape[:2]
    t0 = time.perf_counter()
    result = targets.compute_targets(
        width, height, fh, fw, boxes, image_id, anchor_config=anchors, target_config=target_cfg)
    t1 = time.perf_counter()
    tiles = targets.extract_tiles(fmap.astype(dtype, copy=False), result.points, fw)
    t2 = time.perf_counter()
    records = [schema.make_example(tiles[i], result.point_labels[i], result.point_deltas[i],
                                   image_id, result.locations[i])
               for i in range(len(result.points))]
    t3 = time.perf_counter()
    stage["compute_targets"] += t1 - t0
    stage["extract_tiles"] += t2 - t1
    stage["make_example"] += t3 - t2
    per_image.append(t3 - t0)
    sampled += int(result.num_fg) + int(result.num_bg)
    fg += int(result.num_fg)
    bg += int(result.num_bg)
    distinct += len(records)
    records_bytes += sum(len(r) for r in records)
    if writers:
      for writer in writers:
        for r in records:
          writer.write(r)
  n = len(loaded)
  return {
      "tile_dtype": tile_dtype,
      "images": n,
      "ms_per_image": 1000 * sum(per_image) / n,
      "ms_per_image_median": 1000 * common.percentile(per_image, 50),
      "ms_per_image_by_stage": {k: 1000 * v / n for k, v in stage.items()},
      "records": distinct,
      "records_per_image": distinct / n,
      "sampled_anchors": sampled,
      "fg_anchors": fg,
      "bg_anchors": bg,
      "serialized_bytes_per_record": records_bytes / max(distinct, 1),
  }


def write_bytes(loaded, feature_maps, out_dir: str):
  """File bytes of the same records under each (dtype, compression) setting."""
  import tensorflow as tf  # lazily: see the module doc

  os.makedirs(out_dir, exist_ok=True)
  out = {}
  for dtype in ("float32", "float16"):
    paths = {c: os.path.join(out_dir, f"{dtype}_{c.lower()}.tfrecord") for c in ("NONE", "GZIP")}
    writers = [tf.io.TFRecordWriter(paths[c], tf.io.TFRecordOptions(
        compression_type="" if c == "NONE" else "GZIP")) for c in ("NONE", "GZIP")]
    start = time.perf_counter()
    cost = targets_cost(loaded, feature_maps, dtype, writers)
    for w in writers:
      w.close()
    seconds = time.perf_counter() - start
    for c, path in paths.items():
      size = os.path.getsize(path)
      out[f"{dtype}/{c}"] = {
          "file_bytes": size,
          "bytes_per_record": size / cost["records"],
          "bytes_per_image": size / cost["images"],
          "records": cost["records"],
          "images": cost["images"],
      }
      os.remove(path)
    out[f"{dtype}/write_seconds_both"] = round(seconds, 2)
    out[f"{dtype}/targets_ms_per_image"] = cost["ms_per_image"]
  return out


def image_sizes(loaded):
  shapes = [im.shape[:2] for _, im, _ in loaded]
  return {
      "min_side": int(min(min(shape) for shape in shapes)),
      "max_side": int(max(max(shape) for shape in shapes)),
      "median_long_side": float(np.median([max(shape) for shape in shapes])),
      "median_short_side": float(np.median([min(shape) for shape in shapes])),
      "distinct_sizes": len(set(shapes)),
  }


def time_extractor(loaded, feature_maps, warmup: int):
  """The product's FeatureExtractor on `loaded` (a prefix of the floor's images,
  shapes already seen: compare with floor_repeat_shapes): does the wrapper cost?"""
  extractor = extractor_lib.FeatureExtractor("InceptionResNetV2", "none", 0)
  maps, figures = time_forward(extractor, loaded, warmup, lambda: extractor.traces)
  # zip stops at the prefix: feature_maps holds every image.
  figures["max_abs_diff_vs_floor"] = float(max(
      np.max(np.abs(a - b)) for a, b in zip(maps, feature_maps, strict=False)))
  return figures


def parse_args(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--input", required=True)
  parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
  parser.add_argument("--warmup", type=int, default=4)
  parser.add_argument("--bytes_images", type=int, default=64)
  parser.add_argument("--repeat_pass", action="store_true",
                      help="time a second floor pass over the same images (shapes seen)")
  parser.add_argument("--extractor_images", type=int, default=0,
                      help="also time the pipeline's FeatureExtractor on the first N images")
  parser.add_argument("--bytes_dir", default=os.path.join(common.WORK, "bytes"))
  parser.add_argument("--sections", default="floor,targets,bytes")
  parser.add_argument("--result", required=True)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  sections = set(args.sections.split(","))
  result = {"sections": sorted(sections)}

  loaded, decode_s = load_images(args.input, args.limit)
  result["decode_ms_per_image"] = 1000 * sum(decode_s) / len(decode_s)
  result["image_sizes"] = image_sizes(loaded)
  import_start = time.monotonic()
  import keras  # noqa: F401  (timed: see the module doc)
  import tensorflow as tf  # noqa: F401
  result["tf_import_s"] = time.monotonic() - import_start
  build_start = time.monotonic()
  forward = bare_forward(seed=0)
  result["model_build_s"] = time.monotonic() - build_start
  result["megapixels_per_image"] = float(
      np.mean([im.shape[0] * im.shape[1] for _, im, _ in loaded])) / 1e6

  traces = functools.partial(len, forward.traces)
  feature_maps, result["floor"] = time_forward(forward, loaded, args.warmup, traces)
  result["feature_map_shapes_example"] = [list(f.shape) for f in feature_maps[:4]]
  result["feature_points_per_image"] = float(np.mean([f.shape[0] * f.shape[1]
                                                      for f in feature_maps]))
  if args.repeat_pass:
    # The same images again: every shape has been seen once (oneDNN caches its
    # primitives per shape), as when a dataset repeats a few sizes.
    _, result["floor_repeat_shapes"] = time_forward(forward, loaded, 0, traces)
  del forward  # the floor's model goes before the extractor builds its own
  if args.extractor_images:
    result["extractor"] = time_extractor(loaded[:args.extractor_images], feature_maps,
                                         args.warmup)
  if "targets" in sections:
    result["targets"] = targets_cost(loaded, feature_maps, "float32")
  if "bytes" in sections:
    n = min(args.bytes_images, len(loaded)) if args.bytes_images else len(loaded)
    result["bytes"] = write_bytes(loaded[:n], feature_maps[:n], args.bytes_dir)
  result["process_s"] = time.monotonic() - PROCESS_START
  common.write_result(args.result, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
