"""Tests of pipeline/commands/portable.py without starting its servers: the runner
arguments and the command line (the portable run itself is in
tests/end_to_end/test_runners.py)."""
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

from pipeline.beam import preprocess as preprocess_beam
from pipeline.commands import portable
from pipeline.commands import preprocess as run_lib
from pipeline.io import manifest as manifest_lib
from tests import trainer_fixtures as fixtures


def test_portable_args_name_the_services_and_the_workers():
  args = portable.portable_args("localhost:1", "localhost:2", 3)
  assert "--runner=PortableRunner" in args and "--environment_type=EXTERNAL" in args
  options = PipelineOptions(args).view_as(PortableOptions)
  assert options.job_endpoint == "localhost:1"
  assert options.environment_config == "localhost:2"
  assert "--direct_num_workers=3" in args and "--sdk_worker_parallelism=3" in args


def test_main_runs_the_flags_after_the_separator_and_prints_the_summary(monkeypatch, capsys):
  manifest = manifest_lib.Manifest.from_json(fixtures.make_manifest(records=12))
  calls = []

  def fake_run(argv, workers=2, log_dir=None, extractor_factory=None):
    calls.append((list(argv), workers, log_dir))
    return preprocess_beam.PreprocessResult(manifest, {})
  monkeypatch.setattr(portable, "run", fake_run)
  assert portable.main(["--workers", "3", "--log_dir", "/l", "--", "--input", "r",
                        "--output", "o"]) == 0
  assert calls == [(["--input", "r", "--output", "o"], 3, "/l")]
  assert capsys.readouterr().out == run_lib.summary(manifest) + "\n"
