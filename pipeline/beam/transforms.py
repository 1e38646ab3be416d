"""The composite PTransforms of `rpn-preprocess`: reading inputs, images to records.

ReadInputs lists and pairs the inputs (also used by rpn-anchors), LimitImages
keeps a fixed subset, ImagesToRecords chains the DoFns of pipeline.beam.dofns
with dead-letter routing; pipeline.beam.outputs writes what they produce.

Element flow (one element per image until SampleTargets fans out to records):

  ListImages ─┐
  ListAnnotations ─┼─ PairInputs ─ LoadImages ─ ComputeFeatures ─ SampleTargets ─ records
  [ReadImageSet] ─┘                                                  └─ images.jsonl lines
  every step ──────────────────────────────────────────── errors.jsonl lines + counts
"""
from __future__ import annotations

import hashlib
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio

from pipeline.beam import dofns, elements
from pipeline.core import config as config_lib
from pipeline.io import ilsvrc
from pipeline.model import registry

# ---------------------------------------------------------------------------
# Listing and pairing


class ListFiles(beam.PTransform):
  """(relative id, path) of every file under `root` with one of `extensions`."""

  def __init__(self, root: str, extensions):
    super().__init__()
    self._root = root.rstrip("/")
    self._extensions = tuple(extensions)

  def expand(self, pbegin):
    root, extensions = self._root, self._extensions
    return (pbegin
            | "Match" >> fileio.MatchFiles(root + "/**", empty_match_treatment="ALLOW")
            | "FilterExtension" >> beam.Filter(lambda m: m.path.endswith(extensions))
            | "KeyById" >> beam.Map(lambda m: (ilsvrc.relative_id(m.path, root), m.path)))


# ---------------------------------------------------------------------------
# Per-image steps


# ---------------------------------------------------------------------------
# Composite transforms: what build_pipeline strings together


class ReadInputs(beam.PTransform):
  """PBegin -> {"images": ImageInput, "errors": error records, "found": [count]}.

  Lists images and annotations (and the image set, when given), pairs them by
  id; "found" counts the images that are inputs of this run (with an image
  set, only the listed ones).
  """

  def __init__(self, cfg: config_lib.PreprocessConfig, max_images: Optional[int] = None):
    super().__init__()
    self._cfg = cfg
    self._max_images = max_images

  def expand(self, pbegin):
    cfg = self._cfg
    grouped = {
        "images": pbegin | "ListImages" >> ListFiles(cfg.images_dir, ilsvrc.IMAGE_EXTENSIONS),
        "annotations": pbegin | "ListAnnotations" >> ListFiles(
            cfg.annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,)),
    }
    if cfg.image_set:
      grouped["listed"] = (pbegin | "ReadImageSet" >> beam.io.ReadFromText(cfg.image_set)
                           | "ParseImageSet" >> beam.FlatMap(_listed_ids))
    by_id = grouped | "GroupById" >> beam.CoGroupByKey()
    if self._max_images:
      by_id = by_id | "LimitImages" >> LimitImages(self._max_images, bool(cfg.image_set))
    paired = (by_id
              | "PairInputs" >> beam.ParDo(dofns.PairInputsFn(
                  cfg.missing_annotations, bool(cfg.image_set)))
              .with_outputs(elements.ERRORS, main="ok"))
    if cfg.image_set:
      inputs = (paired.ok, paired[elements.ERRORS] | "ListedImageErrors" >> beam.Filter(
          lambda e: e["outcome"] in (elements.FAILED, elements.SKIPPED))
                ) | "ListedImages" >> beam.Flatten()
    else:
      inputs = by_id | "ImageFiles" >> beam.FlatMap(lambda kv: kv[1]["images"])
    return {"images": paired.ok, "errors": paired[elements.ERRORS],
            "found": inputs | "CountFound" >> beam.combiners.Count.Globally()}


class LimitImages(beam.PTransform):
  """(id, grouped files) -> the `count` ids with an image (and listed, with an
  image set) whose sha256 is smallest: a fixed pseudo-random subset, the same
  on every runner. Other ids are dropped whole, with their annotations."""

  def __init__(self, count: int, use_image_set: bool):
    super().__init__()
    self._count = count
    self._use_image_set = use_image_set

  def expand(self, by_id):
    use_image_set = self._use_image_set

    def candidate(kv):
      files = kv[1]
      return bool(list(files["images"])) and (
          not use_image_set or bool(list(files.get("listed", []))))
    return (by_id | "Candidates" >> beam.Filter(candidate)
            | "Smallest" >> beam.combiners.Top.Smallest(
                self._count, key=lambda kv: hashlib.sha256(kv[0].encode("utf-8")).digest())
            | "Unpack" >> beam.FlatMap(lambda kept: kept))


def _listed_ids(line: str):
  return [(image_id, True) for image_id in ilsvrc.parse_image_set(line)]


class ImagesToRecords(beam.PTransform):
  """ImageInput -> {"records": serialized Examples, "images": images.jsonl dicts,
  "stats": count dicts, "errors": error records}.

  Load (decode, parse, box policy, pad), features (the frozen backbone), then
  targets (anchors, labels, sampling, tiles; with the maps layout, one record
  of the whole feature map instead); any step's failure is an errors record
  (Beam's dead letters for exceptions nobody expected).
  """

  def __init__(self, cfg: config_lib.PreprocessConfig, extractor_factory=None):
    super().__init__()
    self._cfg = cfg
    self._factory = extractor_factory

  def expand(self, images):
    cfg = self._cfg
    spec = registry.backbone_spec(cfg.backbone.backbone)
    loaded = (images | "LoadImages" >> beam.ParDo(
        dofns.LoadImageFn(cfg.backbone, spec.min_input_side, cfg.flip))
        .with_outputs(elements.ERRORS, main="ok").with_exception_handling())
    features = (loaded.ok | "ComputeFeatures" >> beam.ParDo(
        dofns.ComputeFeaturesFn(cfg.backbone, cfg.targets.seed, extractor_factory=self._factory))
        .with_exception_handling())
    fmt = cfg.output_format
    if fmt.layout == config_lib.MAPS_LAYOUT:
      label, to_records = "MapRecords", dofns.MapRecordFn(fmt.tile_dtype)
    else:
      label, to_records = "SampleTargets", dofns.SampleTargetsFn(cfg.anchors, cfg.targets,
                                                                 fmt.tile_dtype)
    sampled = (features.good | label >> beam.ParDo(to_records)
               .with_outputs(elements.IMAGES, elements.STATS, elements.ERRORS, main="records")
               .with_exception_handling())
    errors = ((loaded[elements.ERRORS], sampled[elements.ERRORS],
               loaded.bad | "LoadDeadLetters" >> beam.Map(elements.dead_letter_to_error("load")),
               features.bad
               | "FeatureDeadLetters" >> beam.Map(elements.dead_letter_to_error("features")),
               sampled.bad
               | "TargetDeadLetters" >> beam.Map(elements.dead_letter_to_error("targets")))
              | "ImageErrors" >> beam.Flatten())
    return {"records": sampled.records, "images": sampled[elements.IMAGES],
            "stats": sampled[elements.STATS], "errors": errors}


