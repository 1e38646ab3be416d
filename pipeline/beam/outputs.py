"""The outputs of rpn-preprocess: shards, jsonl files, counts, and the manifest last.

`WriteOutputs` writes the records through Beam's TFRecord sink (fixed or
runner-decided shards, closed at --max_shard_mb), images.jsonl and
errors.jsonl, sums the counts (SumCounts), and only then writes
manifest.json, whose presence marks a finished run (`write_manifest`).
"""
from __future__ import annotations

import collections
from typing import Dict

import apache_beam as beam
from apache_beam.io import textio
from apache_beam.io.tfrecordio import WriteToTFRecord

from pipeline.beam import elements
from pipeline.core import config as config_lib
from pipeline.io import determinism, ilsvrc, shards, storage
from pipeline.io import manifest as manifest_lib
from pipeline.model import layers, registry


class SumCounts(beam.CombineFn):
  """Sums dicts of counts key by key."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, accumulator, counts):
    accumulator.update(counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    total = collections.Counter()
    for accumulator in accumulators:
      total.update(accumulator)
    return total

  def extract_output(self, accumulator):
    return dict(sorted(accumulator.items()))


def sum_box_stats(counts: Dict[str, int]) -> Dict[str, int]:
  """Adds the derived `boxes_dropped` total to the counts."""
  out = dict(counts)
  out["boxes_dropped"] = sum(int(counts.get(k, 0)) for k in ilsvrc.DROPPED_BOX_KEYS)
  return out


def write_to_tfrecord(prefix: str, output_format: config_lib.OutputConfig) -> WriteToTFRecord:
  """WriteToTFRecord of the product's shards, closed at --max_shard_mb when the
  runner decides the shards (--num_shards 0).

  FileBasedSink has `max_bytes_per_shard`, but WriteToTFRecord takes no such
  argument; without it a runner-sharded local run writes one file per worker
  bundle. So it is set on the sink WriteToTFRecord keeps in `_sink`: checked
  against apache-beam 2.77 (tests/pipeline/beam/test_transforms.py fails if that changes).
  """
  fmt = output_format
  write = WriteToTFRecord(
      prefix, file_name_suffix=manifest_lib.shard_suffix(fmt.compression),
      num_shards=fmt.num_shards, shard_name_template="-SSSSS-of-NNNNN",
      compression_type=("gzip" if fmt.compression == "GZIP" else "uncompressed"))
  if fmt.num_shards == 0 and fmt.max_shard_mb:
    sink = write._sink
    if not hasattr(sink, "max_bytes_per_shard"):
      raise RuntimeError("this apache-beam's TFRecord sink has no max_bytes_per_shard; "
                         "see pipeline.beam.outputs.write_to_tfrecord")
    sink.max_bytes_per_shard = int(fmt.max_shard_mb * (1 << 20))
  return write


class WriteOutputs(beam.PTransform):
  """{"records", "images", "stats", "errors", "found"} -> [manifest dict].

  Writes the shards, images.jsonl and errors.jsonl, then, last, manifest.json
  with the counts (side inputs on every other output order it after them).
  Once the shards are in place, each is described on the workers (bytes, and
  records counted by walking its framing: pipeline.io.shards.describe_shard),
  for the manifest's "shards" key.
  """

  def __init__(self, cfg: config_lib.PreprocessConfig):
    super().__init__()
    self._cfg = cfg

  def expand(self, outputs):
    cfg = self._cfg
    records = outputs["records"]
    counts = ((outputs["stats"],
               outputs["errors"] | "ErrorCounts" >> beam.Map(elements.error_counts))
              | "AllCounts" >> beam.Flatten()
              | "SumCounts" >> beam.CombineGlobally(SumCounts()))
    if cfg.shuffle_records:
      records = records | "ShuffleRecords" >> beam.Reshuffle()
    written_shards = records | "WriteShards" >> write_to_tfrecord(
        storage.join(cfg.output, config_lib.shard_prefix(cfg.output_format.layout)),
        cfg.output_format)
    # The sink yields the final file names from one finalize step: reshuffled,
    # so that a runner spreads the counting over its workers.
    shard_info = (written_shards | "SpreadShards" >> beam.Reshuffle()
                  | "DescribeShards" >> beam.Map(shards.describe_shard,
                                                 cfg.output_format.compression))
    written = [
        outputs[key] | f"{name}Lines" >> beam.Map(to_line)
        | f"Write{name}" >> textio.WriteToText(storage.join(cfg.output, file_name),
                                               shard_name_template="", num_shards=1)
        for key, name, file_name, to_line in (
            ("images", "Images", config_lib.IMAGES_NAME, elements.to_json_line),
            ("errors", "Errors", config_lib.ERRORS_NAME, elements.error_line))]
    spec = registry.backbone_spec(cfg.backbone.backbone)
    return (pbegin_of(records) | "Start" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(
                write_manifest, cfg=cfg,
                feature_channels=layers.run_channels(cfg.backbone),
                min_input_side=spec.min_input_side,
                counts=beam.pvalue.AsSingleton(counts),
                found=beam.pvalue.AsSingleton(outputs["found"]),
                records=beam.pvalue.AsSingleton(
                    outputs["records"] | "CountRecords" >> beam.combiners.Count.Globally()),
                shard_info=beam.pvalue.AsList(shard_info),
                images_written=beam.pvalue.AsList(written[0]),
                errors_written=beam.pvalue.AsList(written[1])))


def pbegin_of(pcoll) -> beam.pvalue.PBegin:
  return beam.pvalue.PBegin(pcoll.pipeline)


def write_manifest(_, cfg, feature_channels, min_input_side, counts, found, records,
                   shard_info, images_written, errors_written) -> manifest_lib.Manifest:
  """Completes the counts and writes manifest.json; returns the manifest.

  `shard_info` holds pipeline.io.shards.describe_shard of every written shard;
  their records must add up to the records made, else no manifest is written.
  """
  del images_written, errors_written  # side inputs only to order this step last
  in_shards = sum(shard["records"] for shard in shard_info)
  if in_shards != records:
    raise shards.ShardError(f"{cfg.output}: the shards hold {in_shards} records but the run "
                            f"made {records}; no manifest written")
  counts = dict(counts)
  threads = determinism.pop_threads(counts)
  counts = sum_box_stats(counts)
  counts.update({"images_found": found, "records": records})
  for key in ("images_ok", "images_failed", "images_skipped", "fg_anchors", "bg_anchors"):
    counts.setdefault(key, 0)
  manifest = manifest_lib.build(cfg, counts, [shard["file"] for shard in shard_info],
                                feature_channels, min_input_side, shards=shard_info,
                                backbone_threads=threads)
  manifest_lib.write(cfg.output, manifest)
  return manifest
