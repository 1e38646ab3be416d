"""The preprocessing Beam program: build_pipeline and the runner defaults.

    ReadInputs -> ImagesToRecords -> WriteOutputs (shards, jsonl files, manifest)

`runner_setup` turns the Beam arguments into the ones to run with (the fastest
safe local mode unless the arguments say otherwise); `build_pipeline` adds the
steps to a Beam pipeline (pipeline/beam/metrics.py queries a finished run's counters).
The front end (flags, checks, the lock, clean-up) is pipeline.commands.preprocess.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
  DirectOptions,
  PipelineOptions,
  StandardOptions,
)

from pipeline.beam import outputs as outputs_lib
from pipeline.beam import progress as progress_lib
from pipeline.beam import transforms
from pipeline.core import config as config_lib
from pipeline.io import manifest as manifest_lib


@dataclasses.dataclass(frozen=True)
class RunnerSetup:
  """The Beam arguments to run with, and the defaults they imply."""
  beam_args: List[str]
  local: bool  # DirectRunner: runner-decided shards keep its memory flat
  backbone_threads: Optional[int]  # None: TensorFlow's default (all cores)

  @property
  def num_shards(self) -> int:
    return 0 if self.local else config_lib.OutputConfig().num_shards


def runner_setup(beam_args: Sequence[str], cores: Optional[int] = None) -> RunnerSetup:
  """The fastest safe local mode unless the Beam arguments say otherwise.

  No --direct_* option and no runner other than DirectRunner: multi-process
  DirectRunner, one worker process per core, one TensorFlow thread each, and
  runner-decided shards (the fastest local mode measured, in flat memory;
  BENCHMARKS.md). Given --direct_* options are kept: several worker
  processes share the cores' threads; one process uses them all. Another
  runner keeps Beam's defaults and gets OutputConfig's fixed shard count;
  Dataflow runs one SDK process per vCPU, so one TensorFlow thread each.
  """
  cores = cores or os.cpu_count() or 1
  args = list(beam_args)
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    args.append("--default_sdk_harness_log_level=WARNING")
  runner = PipelineOptions(args).view_as(StandardOptions).runner or "DirectRunner"
  local = runner in ("DirectRunner", "direct")
  # The progress line on local runners only: elsewhere the runner's UI shows the counters.
  if local and not any(a.startswith("--sdk_harness_log_level_overrides") for a in args):
    args.append("--sdk_harness_log_level_overrides="
                + json.dumps({progress_lib.PROGRESS_LOGGER.name: "INFO"}))
  if not local:
    dataflow = runner in ("DataflowRunner", "dataflow")
    return RunnerSetup(args, local=False, backbone_threads=1 if dataflow else None)
  if not any(a.startswith("--direct_") for a in beam_args):
    args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"]
  direct = PipelineOptions(args).view_as(DirectOptions)
  workers = cores if direct.direct_num_workers == 0 else (direct.direct_num_workers or 1)
  if direct.direct_running_mode == "multi_processing" and workers > 1:
    return RunnerSetup(args, local=True, backbone_threads=max(1, cores // workers))
  return RunnerSetup(args, local=True, backbone_threads=None)


def build_pipeline(p, cfg: config_lib.PreprocessConfig, extractor_factory=None):
  """Adds the preprocessing steps to pipeline `p`; returns the main PCollections.

  ReadInputs -> ImagesToRecords -> WriteOutputs (shards, jsonl files, then the
  manifest); every step's errors go to errors.jsonl and the counts.
  """
  inputs = p | "ReadInputs" >> transforms.ReadInputs(cfg)
  images = inputs["images"] | "ImagesToRecords" >> transforms.ImagesToRecords(
      cfg, extractor_factory)
  errors = (inputs["errors"], images["errors"]) | "AllErrors" >> beam.Flatten()
  outputs = dict(images, errors=errors, found=inputs["found"])
  manifest = outputs | "WriteOutputs" >> outputs_lib.WriteOutputs(cfg)
  return dict(outputs, manifest=manifest)


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
  """What one run produced: the manifest it wrote and the Beam metrics."""
  manifest: manifest_lib.Manifest
  metrics: Dict  # counter name -> value; distribution name -> {sum, count, min, max}


