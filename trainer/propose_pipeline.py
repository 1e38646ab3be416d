"""rpn-propose's Beam program: proposals for every image, on any Beam runner.

From images (--input ROOT --split S, or --images GLOB):

  ListImages ─┐
  ListAnnotations ─┴─ PairInputs ─ LoadImages ─ ComputeFeatures ─ Propose ─ proposal shards
                                   (rpn-preprocess's DoFns: the same reading,     │
                                    decoding, box policy, frame and backbone)     ├─ pictures
  every step ─────────────────────────────────────────────── errors.jsonl        └─ propose.json

From a maps dataset (--maps DIR, rpn-preprocess --layout maps with the job's
backbone and layer): ReadMaps (its shards) ─ MapsToFeatures ─ Propose ─ ...;
no backbone runs.

Propose (ProposeFn) runs the job's RPN head (trainer.propose.Head, one per
worker process through Beam's Shared) and the proposal filter of
pipeline.core.proposals, so both sources give the same proposals for the
same features. Output, as rpn-preprocess writes its shards: Beam's text sink
(temporary files, renamed when complete) writes proposals-SSSSS-of-NNNNN.jsonl
(one line per image, in no particular order; shards decided by the runner
locally, closed at 1 GB) and errors.jsonl; pictures of the first --draw
images by id; then, last of all, propose.json with the counts and the shard
names, whose presence marks a finished run.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import apache_beam as beam
import tensorflow as tf
from apache_beam.io import fileio, textio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.tfrecordio import ReadAllFromTFRecord
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.utils import shared

from pipeline.beam import dofns, elements, transforms, watchdog
from pipeline.beam import metrics as metrics_lib
from pipeline.beam import outputs as outputs_lib
from pipeline.beam import preprocess as preprocess_beam
from pipeline.beam import progress as progress_lib
from pipeline.core import config
from pipeline.core import frame as frame_lib
from pipeline.io import ilsvrc, schema, storage
from pipeline.io import manifest as manifest_lib
from pipeline.model import registry
from trainer import formats, job
from trainer import propose as propose_lib
from trainer import settings as settings_lib
from trainer.arguments import ProposeArgs

_LOGGER = logging.getLogger(__name__)

# Runner-decided proposal shards close at this size (as rpn-preprocess's --max_shard_mb).
MAX_SHARD_BYTES = 1 << 30
# The pipeline's summary, which propose.json completes (written after the formats).
PIPELINE_SUMMARY = ".pipeline-summary.json"
# What an earlier run left in --output (deleted before a run, and after a failed one).
OUTPUT_GLOBS = (settings_lib.PROPOSALS_PATTERN, settings_lib.PROPOSALS_NAME, config.ERRORS_NAME,
                settings_lib.PROPOSE_SETTINGS_NAME, PIPELINE_SUMMARY, "pictures/*.png",
                formats.DETECTRON2_NAME, formats.COCO_RESULTS_NAME, formats.COCO_IMAGES_NAME,
                "*.tmp")


# ---------------------------------------------------------------------------
# Inputs


class ListImageInputs(beam.PTransform):
  """PBegin -> {"images": ImageInput, "errors": error records}: the images of
  --input ROOT --split S (paired with their XML by id; an image without one is
  proposed for, without gt boxes) or of --images GLOB (ids relative to the
  glob's directory). A second image file of an id is an errors line (pairing);
  an XML without an image is not an input and is left out."""

  def __init__(self, input_root: Optional[str], split: str, images_glob: Optional[str]):
    super().__init__()
    self._root, self._split, self._glob = input_root, split, images_glob

  def expand(self, pbegin):
    if self._root:
      images_dir, annotations_dir = ilsvrc.layout_roots(input_root=self._root,
                                                        split=self._split)
      grouped = {
          "images": pbegin | "ListImages" >> transforms.ListFiles(
              images_dir, ilsvrc.IMAGE_EXTENSIONS),
          "annotations": pbegin | "ListAnnotations" >> transforms.ListFiles(
              annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,)),
      }
    else:
      root = propose_lib.glob_root(self._glob)
      grouped = {
          "images": (pbegin | "MatchImages" >> fileio.MatchFiles(self._glob)
                     | "KeyById" >> beam.Map(lambda m: (ilsvrc.relative_id(m.path, root),
                                                        m.path))),
          "annotations": pbegin | "NoAnnotations" >> beam.Create([]).with_output_types(
              Tuple[str, str]),
      }
    paired = (grouped | "GroupById" >> beam.CoGroupByKey()
              | "PairInputs" >> beam.ParDo(dofns.PairInputsFn("negative", False))
              .with_outputs(elements.ERRORS, main="ok"))
    errors = paired[elements.ERRORS] | "InputErrors" >> beam.Filter(
        lambda e: e["outcome"] in (elements.FAILED, elements.SKIPPED))
    return {"images": paired.ok, "errors": errors}


class MapsToFeaturesFn(beam.DoFn):
  """(shard path, maps record) -> ImageFeatures, or an errors line (stage maps)
  for a record that does not hold together.

  The decoded image's size comes from the record's source_size; a record
  without one (rpn-preprocess 0.8.0 and earlier) is taken as unresized, which holds
  unless the dataset was resized (then it is an errors line: its boxes could
  not be taken back to the image's pixels) or the image was padded (its
  image_width and image_height are then the padded frame's).
  """

  def __init__(self, manifest: manifest_lib.Manifest):
    self._dtype = manifest.dtype
    self._min_input_side = manifest.min_input_side or registry.backbone_spec(
        manifest.backbone).min_input_side
    self._min_side, self._max_side = manifest.resize.min_side, manifest.resize.max_side

  def process(self, element):
    path, serialized = element
    elements.counter("images_found").inc()
    try:
      record = schema.parse_map_example(serialized, self._dtype)
    except Exception as e:  # pylint: disable=broad-except  # protobuf's DecodeError too
      yield beam.pvalue.TaggedOutput(elements.ERRORS, self._failed(
          path, f"{type(e).__name__}: {e}"))
      return
    height, width = record.image_size
    if record.source_size is not None:
      source_height, source_width = record.source_size
      scale = frame_lib.box_scale(source_width, source_height, self._min_input_side,
                                  self._min_side, self._max_side)
    elif self._min_side or self._max_side:
      yield beam.pvalue.TaggedOutput(elements.ERRORS, self._failed(
          path, f"record {record.image_id!r} has no source_size (written by 0.8.0 or earlier) and "
          f"the dataset was resized: rerun rpn-preprocess to propose in the images' pixels",
          record.image_id))
      return
    else:
      source_width, source_height, scale = width, height, (1.0, 1.0)
    maps = record.feature_maps
    yield elements.ImageFeatures(
        record.image_id, path, width, height, record.gt_boxes,
        maps if len(maps) > 1 else maps[0], {},
        flipped=record.image_id.endswith(config.FLIP_SUFFIX),
        source=elements.ImageSource(source_width, source_height, scale))

  @staticmethod
  def _failed(path: str, reason: str, image_id: Optional[str] = None) -> Dict[str, Any]:
    elements.counter("images_failed").inc()
    elements.counter("failed_maps").inc()
    progress_lib.PROGRESS.error()
    return elements.error_record(path, "maps", reason, image_id=image_id)


# ---------------------------------------------------------------------------
# The head


class _SharedHead:
  """Holder so that one RPN head serves every DoFn instance of a worker process."""

  def __init__(self, head):
    self.head = head
    self.lock = threading.Lock()
    self.traces_counted = 0  # the head's traces already added to the counter


class ProposeFn(beam.DoFn):
  """ImageFeatures -> one proposals line (main), or an errors line (stage
  propose) for an image that gets none; counts (and the filter's, tagged stats).

  The job's head loads once per worker process (Beam's Shared). The
  launcher loads it once before the run and the command's checks compare a
  maps dataset with the job, so that a job that does not fit its features
  stops the command first; should one slip through, each image gets an
  errors line (Beam's dead letters) and the failure budget ends the run
  with exit 1.
  """

  def __init__(self, job_dir: str, proposal_config: config.ProposalConfig,
               with_paths: bool, count_images: bool):
    self._job_dir = job_dir
    self._config = proposal_config
    self._with_paths = with_paths  # from images: the line names its file
    self._count_images = count_images  # from maps: the progress line counts here
    self._shared = shared.Shared()

  def setup(self):
    def load():
      head = propose_lib.Head(self._job_dir, self._config)
      elements.counter("head_loads").inc()
      return _SharedHead(head)
    self._holder = self._shared.acquire(load, tag=(self._job_dir, self._config))
    self._millis = beam.metrics.Metrics.distribution(elements.NAMESPACE, "head_ms")

  def process(self, item: elements.ImageFeatures):
    source = item.source or elements.ImageSource(item.width, item.height, (1.0, 1.0))
    stats: Dict[str, int] = {}
    start = time.monotonic()
    holder = self._holder
    try:
      with holder.lock:
        try:
          boxes, scores = holder.head.propose(item.width, item.height, item.feature_map,
                                              source.box_scale, stats)
        finally:  # each trace of the head counted once per worker process
          if holder.head.traces > holder.traces_counted:
            elements.counter("head_traces").inc(holder.head.traces - holder.traces_counted)
            holder.traces_counted = holder.head.traces
    except job.JobError:
      raise  # a dead letter: the job does not fit (see the class doc)
    except (ValueError, tf.errors.OpError, MemoryError) as e:
      reason = (str(e) if isinstance(e, propose_lib.NoProposalsError)
                else f"{type(e).__name__}: {e}")
      elements.counter("images_failed").inc()
      elements.counter("failed_propose").inc()
      progress_lib.PROGRESS.error()
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
          item.image_path, "propose", reason, image_id=item.image_id))
      return
    self._millis.update(int(1000 * (time.monotonic() - start)))
    for key, value in stats.items():
      elements.counter(key).inc(value)
    if stats:  # propose.json's counts (min_size_relaxed)
      yield beam.pvalue.TaggedOutput(elements.STATS, dict(stats))
    elements.counter("images_ok").inc()
    elements.counter("proposals").inc(len(boxes))
    if self._count_images:
      progress_lib.PROGRESS.image_done()
    gt = item.gt_boxes if source.annotated else None
    yield propose_lib.proposal_line(
        item.image_id, item.width, item.height, boxes, scores, gt,
        (source.width, source.height), source.box_scale,
        path=item.image_path if self._with_paths else None)


def line_counts(line: Dict[str, Any]) -> Dict[str, int]:
  """What a proposals line adds to propose.json's counts."""
  return {"images_ok": 1, "proposals": len(line["boxes"])}


def input_counts(error: Dict[str, Any]) -> Dict[str, int]:
  """What an errors line adds to propose.json's counts."""
  return {"images_failed": 1} if error["outcome"] == elements.FAILED else {
      "images_skipped": 1}


# ---------------------------------------------------------------------------
# The pipeline


def backbone_config(manifest: manifest_lib.Manifest, weights: Optional[str],
                    threads: Optional[int]) -> config.BackboneConfig:
  """The job's backbone and frame as rpn-preprocess's DoFns take them."""
  return config.BackboneConfig(
      backbone=manifest.backbone, weights=weights or manifest.weights,
      feature_layer=manifest.feature_layer,
      feature_layers=tuple(manifest.feature_layers or ()),
      min_side=manifest.resize.min_side, max_side=manifest.resize.max_side,
      max_pixels=manifest.max_pixels, stride_mode=manifest.stride_mode, threads=threads)


def build_pipeline(p, run: ProposeArgs, manifest: manifest_lib.Manifest,
                   setup: preprocess_beam.RunnerSetup, num_shards: Optional[int] = None):
  """Adds rpn-propose's steps to pipeline `p`; returns the lines' PCollection.

  `manifest`: the job's; with run.maps, the maps dataset's manifest is read
  from there. num_shards: of the proposals (None: the runner's default, as
  rpn-preprocess: decided by the runner locally, 16 elsewhere).
  """
  errors = []
  if run.maps:
    maps_manifest = manifest_lib.Manifest.load(run.maps)
    features = (p | "MapShards" >> beam.Create(maps_manifest.shard_paths(run.maps))
                | "ReadMaps" >> ReadAllFromTFRecord(
                    compression_type=(CompressionTypes.GZIP if maps_manifest.compression == "GZIP"
                                      else CompressionTypes.UNCOMPRESSED),
                    with_filename=True)
                | "MapsToFeatures" >> beam.ParDo(MapsToFeaturesFn(maps_manifest))
                .with_outputs(elements.ERRORS, main="ok"))
    errors.append(features[elements.ERRORS])
    features = features.ok
  else:
    inputs = p | "ListInputs" >> ListImageInputs(run.input, run.split, run.images)
    errors.append(inputs["errors"])
    spec = registry.backbone_spec(manifest.backbone)
    backbone = backbone_config(manifest, run.weights, setup.backbone_threads)
    loaded = (inputs["images"] | "LoadImages" >> beam.ParDo(dofns.LoadImageFn(
        backbone, manifest.min_input_side or spec.min_input_side))
        .with_outputs(elements.ERRORS, main="ok").with_exception_handling())
    computed = (loaded.ok | "ComputeFeatures" >> beam.ParDo(dofns.ComputeFeaturesFn(
        backbone, manifest.weights_seed)).with_exception_handling())
    errors += [loaded[elements.ERRORS],
               loaded.bad | "LoadDeadLetters" >> beam.Map(elements.dead_letter_to_error("load")),
               computed.bad
               | "FeatureDeadLetters" >> beam.Map(elements.dead_letter_to_error("features"))]
    features = computed.good
  proposed = (features | "Propose" >> beam.ParDo(ProposeFn(
      run.job_dir, run.proposal, with_paths=not run.maps, count_images=bool(run.maps)))
      .with_outputs(elements.ERRORS, elements.STATS, main="lines").with_exception_handling())
  errors += [proposed[elements.ERRORS],
             proposed.bad | "ProposeDeadLetters" >> beam.Map(
                 elements.dead_letter_to_error("propose"))]
  errors = errors | "AllErrors" >> beam.Flatten()
  lines = proposed.lines
  output = run.output.rstrip("/")
  shards = num_shards if num_shards is not None else setup.num_shards
  written = (lines | "ProposalLines" >> beam.Map(elements.to_json_line)
             | "WriteProposals" >> textio.WriteToText(
                 storage.join(output, settings_lib.PROPOSALS_PREFIX),
                 file_name_suffix=settings_lib.PROPOSALS_SUFFIX, num_shards=shards,
                 shard_name_template="-SSSSS-of-NNNNN",
                 max_bytes_per_shard=MAX_SHARD_BYTES if shards == 0 else None))
  errors_written = (errors | "ErrorLines" >> beam.Map(elements.error_line)
                    | "WriteErrors" >> textio.WriteToText(
                        storage.join(output, config.ERRORS_NAME), shard_name_template="",
                        num_shards=1))
  counts = ((lines | "LineCounts" >> beam.Map(line_counts),
             errors | "ErrorCounts" >> beam.Map(input_counts), proposed[elements.STATS])
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(outputs_lib.SumCounts()))
  pictures = beam.pvalue.AsList(draw_pictures(lines, run, manifest, output))
  (outputs_lib.pbegin_of(lines) | "Start" >> beam.Create([None])
   | "WriteSummary" >> beam.Map(
       write_summary, run=run, manifest=manifest, counts=beam.pvalue.AsSingleton(counts),
       shards=beam.pvalue.AsList(written), pictures=pictures,
       errors_written=beam.pvalue.AsList(errors_written)))
  return lines


def draw_pictures(lines, run: ProposeArgs, manifest: manifest_lib.Manifest, output: str):
  """Pictures of the run.draw images of least id (the same on every runner):
  the paths written."""
  if not run.draw:
    return outputs_lib.pbegin_of(lines) | "NoPictures" >> beam.Create([]).with_output_types(str)
  chosen = beam.pvalue.AsSingleton(
      lines | "LineIds" >> beam.Map(lambda line: line["image_id"])
      | "FirstIds" >> beam.combiners.Top.Smallest(run.draw))

  def draw(line, first_ids):
    if line["image_id"] in first_ids:
      yield propose_lib.draw_picture(line, output, manifest)
  return lines | "DrawPictures" >> beam.FlatMap(draw, chosen)


def write_summary(_, run: ProposeArgs, manifest: manifest_lib.Manifest, counts,
                  shards, pictures, errors_written) -> Dict[str, Any]:
  """Writes the run's summary, last of the pipeline's files, into
  PIPELINE_SUMMARY; the launcher adds the detectors' formats and writes it
  as propose.json (trainer.propose.propose). Returns it."""
  del errors_written  # a side input only to order this step after the errors file
  counts = dict(counts)
  for key in ("images_ok", "images_failed", "proposals"):
    counts.setdefault(key, 0)
  counts["images_found"] = counts["images_ok"] + counts["images_failed"] + counts.get(
      "images_skipped", 0)
  summary = {
      "job_dir": run.job_dir,
      "input": run.input, "split": run.split if run.input else None, "images": run.images,
      "maps": run.maps, "formats_requested": list(run.formats),
      "backbone": manifest.backbone, "weights": run.weights or manifest.weights,
      "proposal": dataclasses.asdict(run.proposal),
      "counts": dict(sorted(counts.items())),
      "pictures": len(pictures),
      "shards": sorted(path.rsplit("/", 1)[-1] for path in shards),
  }
  storage.write_json(storage.join(run.output.rstrip("/"), PIPELINE_SUMMARY), summary)
  return summary


def remove_pipeline_summary(output: str) -> None:
  """Deletes PIPELINE_SUMMARY once propose.json holds it."""
  from apache_beam.io.filesystems import FileSystems  # lazy, as Beam's
  FileSystems.delete([storage.join(output, PIPELINE_SUMMARY)])


def run_pipeline(run: ProposeArgs, beam_args: Sequence[str] = ()
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Builds and runs the pipeline with the runner defaults of rpn-preprocess
  (pipeline.beam.preprocess.runner_setup); returns (the run's Beam counters,
  propose.json)."""
  from pipeline.commands import preprocess as preprocess_command  # lazy: its parsers
  setup = preprocess_beam.runner_setup(beam_args)
  preprocess_command.show_progress(setup)
  manifest = job.read_manifest(run.job_dir)
  options = PipelineOptions(setup.beam_args)
  options.view_as(SetupOptions).save_main_session = False
  output = run.output.rstrip("/")
  clear = functools.partial(preprocess_command.clear_outputs, globs=OUTPUT_GLOBS)
  deleted = clear(output)
  if deleted:
    _LOGGER.warning("cleared %d files of an earlier run from %s", len(deleted), output)
  storage.makedirs(output)
  p = beam.Pipeline(options=options)
  build_pipeline(p, run, manifest, setup)
  with preprocess_command.removed_on_failure(output, clear), watchdog.watched():
    result = p.run()
    result.wait_until_finish()
  summary = storage.read_json(storage.join(output, PIPELINE_SUMMARY))
  return metrics_lib.query(result), summary


# ---------------------------------------------------------------------------
# The command


def propose(run: ProposeArgs, beam_args: Sequence[str] = ()) -> Dict[str, Any]:
  """rpn-propose: runs the pipeline over every image (or maps record) and
  waits for it, writes the detectors' formats from its shards, then
  propose.json, last of all; returns propose.json with "output", "seconds"
  and the run's Beam counters ("metrics"). `run` comes from rpn-propose's
  checked flags (trainer.cli.check_propose); `beam_args` are Beam's (runner
  and its options: without any, the fastest local mode, as rpn-preprocess).

  The job's head is loaded here once before the run, so that a job that does
  not fit its manifest ends the command (JobError) before any worker starts.
  """
  start = time.monotonic()
  output = run.output.rstrip("/")
  head = propose_lib.Head(run.job_dir, run.proposal)  # JobError now, not on every worker
  if run.weights and run.weights != head.manifest.weights and not run.maps:
    _LOGGER.warning("backbone weights %s instead of the manifest's %s: the RPN was trained "
                    "on features of the latter", run.weights, head.manifest.weights)
  metrics, summary = run_pipeline(run, beam_args)
  summary["formats"] = dict(formats.write_formats(output, run.formats),
                            jsonl={"files": summary["shards"]})
  summary["units"] = formats.UNITS
  storage.write_json(storage.join(output, settings_lib.PROPOSE_SETTINGS_NAME), summary)
  remove_pipeline_summary(output)
  return dict(summary, output=output, seconds=round(time.monotonic() - start, 3),
              metrics=metrics)


def report(settings: Dict[str, Any]) -> None:
  """The summary on stdout."""
  c = settings["counts"]
  print(f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} "
        f"failed; {c['proposals']} proposals "
        f"({c['proposals'] / max(1, c['images_ok']):.1f} per image) in {settings['seconds']:.1f} s")
  others = [name for fmt, written in settings["formats"].items() if fmt != "jsonl"
            for name in written["files"]]
  print(f"wrote {len(settings['shards'])} proposal shard(s) "
        f"({settings_lib.PROPOSALS_PATTERN}), {', '.join(others + [config.ERRORS_NAME])}, "
        f"{settings['pictures']} pictures and {settings_lib.PROPOSE_SETTINGS_NAME} "
        f"into {settings['output']}")
  print(metrics_lib.format_table(settings["metrics"]))
