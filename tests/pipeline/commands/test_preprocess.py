"""rpn-preprocess's front end: runner_setup's defaults, config_from_args, and the plain CLI run."""
import json
import logging
import os
import re

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from pipeline.beam import preprocess as preprocess_beam
from pipeline.beam import progress as progress_lib
from pipeline.commands import preprocess as run
from pipeline.core import config as config_lib
from tests import dataset_fixtures as fixtures

MULTI = "--direct_running_mode=multi_processing"
LOG_LEVEL = "--default_sdk_harness_log_level=WARNING"
LOG_OVERRIDES = ("--sdk_harness_log_level_overrides="
                 + json.dumps({progress_lib.PROGRESS_LOGGER.name: "INFO"}))


def _count(args, prefix):
  return sum(1 for a in args if a.startswith(prefix))


def _direct(args):
  return PipelineOptions(list(args)).view_as(DirectOptions)


# ---------------------------------------------------------------------------
# runner_setup


@pytest.mark.parametrize("beam_args", [[], ["--runner=DirectRunner"]],
                         ids=["no_args", "direct_runner"])
def test_default_is_local_multi_process_one_thread_each(beam_args):
  setup = preprocess_beam.runner_setup(beam_args, cores=4)
  assert setup.local
  assert MULTI in setup.beam_args
  assert "--direct_num_workers=4" in setup.beam_args
  assert _count(setup.beam_args, "--direct_running_mode") == 1
  assert _count(setup.beam_args, "--direct_num_workers") == 1
  direct = _direct(setup.beam_args)
  assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 4)
  assert setup.backbone_threads == 1
  assert setup.num_shards == 0
  for arg in beam_args:
    assert arg in setup.beam_args


def test_cores_decide_the_worker_count():
  setup = preprocess_beam.runner_setup([], cores=3)
  assert _direct(setup.beam_args).direct_num_workers == 3
  assert setup.backbone_threads == 1


def test_in_memory_kept_as_given():
  setup = preprocess_beam.runner_setup(["--direct_running_mode=in_memory"], cores=4)
  assert setup.local
  assert "--direct_running_mode=in_memory" in setup.beam_args
  assert MULTI not in setup.beam_args
  assert _count(setup.beam_args, "--direct_running_mode") == 1
  assert _count(setup.beam_args, "--direct_num_workers") == 0  # no workers added
  assert _direct(setup.beam_args).direct_running_mode == "in_memory"
  assert setup.backbone_threads is None
  assert setup.num_shards == 0


def test_given_workers_share_the_cores():
  given = [MULTI, "--direct_num_workers=2"]
  setup = preprocess_beam.runner_setup(given, cores=4)
  assert setup.local
  assert setup.beam_args[:2] == given
  assert _count(setup.beam_args, "--direct_num_workers") == 1
  assert _direct(setup.beam_args).direct_num_workers == 2
  assert setup.backbone_threads == 2
  assert setup.num_shards == 0


def test_more_workers_than_cores_still_one_thread():
  setup = preprocess_beam.runner_setup([MULTI, "--direct_num_workers=8"], cores=4)
  assert setup.backbone_threads == 1


def test_multi_process_with_one_worker_uses_all_threads():
  setup = preprocess_beam.runner_setup([MULTI, "--direct_num_workers=1"], cores=4)
  assert setup.local and setup.backbone_threads is None


def test_zero_workers_means_one_per_core():
  # Beam's FnApiRunner reads --direct_num_workers=0 as one worker per core.
  setup = preprocess_beam.runner_setup([MULTI, "--direct_num_workers=0"], cores=4)
  assert setup.local and setup.backbone_threads == 1
  assert _direct(setup.beam_args).direct_num_workers == 0  # kept as given


def test_dataflow_runner_fixed_shards_one_thread():
  setup = preprocess_beam.runner_setup(["--runner=DataflowRunner"], cores=4)
  assert not setup.local
  assert setup.num_shards == config_lib.OutputConfig().num_shards == 16
  assert setup.backbone_threads == 1
  assert not any(a.startswith("--direct_") for a in setup.beam_args)
  assert "--runner=DataflowRunner" in setup.beam_args


def test_other_runner_keeps_tensorflow_default_threads():
  setup = preprocess_beam.runner_setup(["--runner=FlinkRunner"], cores=4)
  assert not setup.local
  assert setup.backbone_threads is None
  assert setup.num_shards == 16
  assert not any(a.startswith("--direct_") for a in setup.beam_args)


def test_log_level_options_added_once():
  setup = preprocess_beam.runner_setup([], cores=4)
  assert _count(setup.beam_args, "--default_sdk_harness_log_level") == 1
  assert _count(setup.beam_args, "--sdk_harness_log_level_overrides") == 1
  assert LOG_LEVEL in setup.beam_args and LOG_OVERRIDES in setup.beam_args
  # The overrides turn the progress logger on in workers (valid JSON, INFO).
  override = next(a for a in setup.beam_args if a.startswith("--sdk_harness_log_level_overrides"))
  assert json.loads(override.split("=", 1)[1]) == {"pipeline.progress": "INFO"}
  # Set up again from its own arguments: nothing is added a second time.
  again = preprocess_beam.runner_setup(setup.beam_args, cores=4)
  assert again.beam_args == setup.beam_args
  # Other runners: no progress line (their UI shows the counters).
  for runner in ("DataflowRunner", "FlinkRunner", "PortableRunner"):
    other = preprocess_beam.runner_setup([f"--runner={runner}"], cores=4)
    assert _count(other.beam_args, "--default_sdk_harness_log_level") == 1
    assert _count(other.beam_args, "--sdk_harness_log_level_overrides") == 0


def test_given_log_level_options_are_not_duplicated():
  given = ["--default_sdk_harness_log_level=DEBUG",
           '--sdk_harness_log_level_overrides={"apache_beam": "ERROR"}']
  setup = preprocess_beam.runner_setup(given, cores=4)
  assert _count(setup.beam_args, "--default_sdk_harness_log_level") == 1
  assert _count(setup.beam_args, "--sdk_harness_log_level_overrides") == 1
  assert given[0] in setup.beam_args and given[1] in setup.beam_args
  assert LOG_LEVEL not in setup.beam_args and LOG_OVERRIDES not in setup.beam_args


# ---------------------------------------------------------------------------
# config_from_args


def _parse(*flags):
  return run.build_parser().parse_args(["--input", "/data/root", "--output", "/out/dir/",
                                        *flags])


def test_unset_flags_take_the_setup_defaults():
  local = run.config_from_args(_parse(), preprocess_beam.runner_setup([], cores=4))
  assert local.output_format.num_shards == 0
  assert local.backbone.threads == 1
  dataflow = run.config_from_args(_parse(),
                                 preprocess_beam.runner_setup(["--runner=DataflowRunner"], 4))
  assert dataflow.output_format.num_shards == 16
  assert dataflow.backbone.threads == 1
  flink = run.config_from_args(_parse(),
                              preprocess_beam.runner_setup(["--runner=FlinkRunner"], cores=4))
  assert flink.output_format.num_shards == 16
  assert flink.backbone.threads is None
  shared = run.config_from_args(
      _parse(), preprocess_beam.runner_setup([MULTI, "--direct_num_workers=2"], cores=4))
  assert shared.backbone.threads == 2
  # The other fields do not depend on the runner.
  assert local.images_dir == "/data/root/Data/DET/train"
  assert local.annotations_dir == "/data/root/Annotations/DET/train"
  assert local.output == "/out/dir"
  assert local.anchors == config_lib.AnchorConfig()
  assert local.targets == config_lib.TargetConfig()


def test_no_setup_means_local_defaults():
  cfg = run.config_from_args(_parse())
  assert cfg.output_format.num_shards == 0
  assert cfg.backbone.threads is None


def test_explicit_flags_win_over_the_setup():
  setup = preprocess_beam.runner_setup([], cores=4)
  cfg = run.config_from_args(_parse("--num_shards", "5", "--backbone_threads", "3"), setup)
  assert cfg.output_format.num_shards == 5
  assert cfg.backbone.threads == 3
  dataflow = preprocess_beam.runner_setup(["--runner=DataflowRunner"], cores=4)
  cfg = run.config_from_args(_parse("--num_shards", "0", "--backbone_threads", "4"), dataflow)
  assert cfg.output_format.num_shards == 0  # an explicit 0 is not "unset"
  assert cfg.backbone.threads == 4


@pytest.mark.parametrize("flags, named", [
    (("--num_shards", "-1"), "--num_shards"),
    (("--max_shard_mb", "-0.5"), "--max_shard_mb"),
    (("--batch_size", "0"), "--batch_size"),
    (("--fg_fraction", "0"), "--fg_fraction"),
    (("--fg_fraction", "1.5"), "--fg_fraction"),
    (("--bg_iou_thresh", "0.8", "--fg_iou_thresh", "0.7"), "bg_iou_thresh"),
    (("--fg_iou_thresh", "1.2"), "fg_iou_thresh"),
    (("--split", "../etc"), "--split"),
    (("--backbone_threads", "0"), "--backbone_threads"),
    (("--backbone_threads", "-2"), "--backbone_threads"),
])
def test_bad_values_raise_naming_the_flag(flags, named):
  with pytest.raises(ValueError, match=re.escape(named)):
    run.config_from_args(_parse(*flags), preprocess_beam.runner_setup([], cores=4))


def test_maps_layout_takes_no_target_flags():
  cfg = run.config_from_args(_parse("--layout", "maps", "--tile_dtype", "float16", "--seed", "3"))
  assert cfg.output_format.layout == "maps" and cfg.output_format.tile_dtype == "float16"
  assert cfg.anchors == config_lib.AnchorConfig()  # recorded as rpn-train's defaults
  assert run.config_from_args(_parse("--layout", "maps", "--scales", "3,6,12")).anchors == (
      config_lib.AnchorConfig())  # the default, given: nothing to refuse
  for flags, flag in ((("--scales", "2,4"), "--scales 2,4"), (("--ratios", "1"), "--ratios 1"),
                      (("--fg_iou_thresh", "0.6"), "--fg_iou_thresh 0.6"),
                      (("--batch_size", "128"), "--batch_size 128"),
                      (("--fg_fraction", "0.25"), "--fg_fraction 0.25")):
    with pytest.raises(ValueError, match=re.escape(flag) + ": with --layout maps .* rpn-train"):
      run.config_from_args(_parse("--layout", "maps", *flags))


def test_clear_outputs_removes_the_shards_of_both_layouts(tmp_path):
  names = ["tiles-00000-of-00001.tfrecord", "maps-00000-of-00002.tfrecord.gz",
           config_lib.MANIFEST_NAME, "keep.txt"]
  for name in names:
    (tmp_path / name).write_text("x")
  run.clear_outputs(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_conflicting_inputs_raise():
  args = run.build_parser().parse_args(
      ["--input", "/r", "--images", "/i", "--annotations", "/a", "--output", "/o"])
  with pytest.raises(ValueError, match="--input"):
    run.config_from_args(args, preprocess_beam.runner_setup([], cores=4))


# ---------------------------------------------------------------------------
# The plain CLI run


def test_plain_run_is_multi_process_with_runner_decided_shards(tmp_path, monkeypatch, caplog):
  """No Beam arguments: one worker process per core, shards decided by the runner."""
  import tensorflow as tf
  root, output = str(tmp_path / "data"), str(tmp_path / "out")
  written = fixtures.write_dataset(root, num_images=4, seed=3)
  setups = []
  real_setup = preprocess_beam.runner_setup

  def spy(beam_args, cores=None):
    setups.append(real_setup(beam_args, cores))
    return setups[-1]

  monkeypatch.setattr(preprocess_beam, "runner_setup", spy)
  # Two cores whatever the machine: two worker processes (each imports
  # TensorFlow), so the test stays fast on many-core machines.
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  caplog.set_level(logging.INFO)
  result = run.run(["--input", root, "--output", output, "--backbone", "TinyTestNet",
                    "--weights", "none"])
  # The run was set up for the multi-process mode, one worker per core.
  assert len(setups) == 1
  direct = _direct(setups[0].beam_args)
  assert direct.direct_running_mode == "multi_processing"
  assert direct.direct_num_workers == 2
  assert setups[0].backbone_threads == 1
  # The worker processes' progress lines (relayed to this process) name
  # worker pids other than this one: the images were processed elsewhere.
  pids = {int(m) for record in caplog.records
          for m in re.findall(r"progress \(worker (\d+)\)", record.getMessage())}
  assert pids and os.getpid() not in pids, pids
  manifest, metrics = result.manifest, result.metrics
  counts = manifest.counts
  # Shards decided by the runner, closed at the default --max_shard_mb.
  assert manifest.max_shard_mb == config_lib.OutputConfig().max_shard_mb
  assert manifest.num_shards == len(manifest.shard_files) >= 1
  on_disk = sorted(n for n in os.listdir(output) if n.startswith(config_lib.SHARD_PREFIX))
  assert on_disk == list(manifest.shard_files)
  assert all(n.endswith(f"-of-{manifest.num_shards:05d}.tfrecord") for n in on_disk)
  # Counts: the manifest, the Beam metrics and the files agree.
  assert counts["images_found"] == counts["images_ok"] == len(written) == 4
  assert counts["images_failed"] == counts["images_skipped"] == 0
  assert metrics["images_ok"] == counts["images_ok"] == metrics["images_found"]
  assert metrics["images_featurized"] == 4
  assert metrics["backbone_ms"]["count"] == 4
  # The latency buckets behind the table's percentiles, from the worker processes too.
  assert sum(v for k, v in metrics.items() if k.startswith("backbone_ms_le_")) == 4
  assert metrics["records"] == counts["records"] == counts["records_expected"] > 0
  assert metrics["fg_anchors"] == counts["fg_anchors"]
  assert metrics["bg_anchors"] == counts["bg_anchors"]
  records = list(tf.data.TFRecordDataset([os.path.join(output, n) for n in on_disk]))
  assert len(records) == counts["records"]
  assert metrics["record_bytes"] == sum(len(r.numpy()) for r in records)
  with open(os.path.join(output, config_lib.IMAGES_NAME)) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  assert sorted(line["image_id"] for line in lines) == sorted(written)
  assert sum(line["num_locations"] for line in lines) == counts["records"]


def test_unknown_feature_layer_stops_before_the_pipeline(tmp_path, capsys):
  output = tmp_path / "out"
  fixtures.write_dataset(str(tmp_path / "data"), num_images=1)
  code = run.main(["--input", str(tmp_path / "data"), "--output", str(output),
                   "--backbone", "VGG16", "--weights", "none", "--feature_layer", "block5_conv9"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err
  assert err.startswith("rpn-preprocess: error: --feature_layer block5_conv9: no such layer "
                        "in VGG16; nearest: block5_conv3")
  assert not output.exists()  # nothing written, not even the cleared directory
