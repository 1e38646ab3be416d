"""The Beam commands' flags as pipeline options (pipeline/commands/options.py):
they travel with the job, without changing the strict parsers."""
import argparse
import json

from apache_beam.options.pipeline_options import (
  PipelineOptions,
  SetupOptions,
  StandardOptions,
  _BeamArgumentParser,
)

from pipeline.commands import anchors, options, preprocess
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers


def _beam_flags(options_class) -> set:
  parser = _BeamArgumentParser(allow_abbrev=False)
  options_class._add_argparse_args(parser)  # noqa: SLF001 - what Beam calls
  return {flag for action in parser._actions for flag in action.option_strings}  # noqa: SLF001


def test_every_flag_of_the_command_is_a_pipeline_option():
  for options_class, build in ((preprocess.PreprocessOptions, preprocess.build_parser),
                               (anchors.AnchorsOptions, anchors.build_parser)):
    own = {flag for action in options.option_actions(build()) for flag in action.option_strings}
    assert {"--input", "--output", "--scales", "--max_failed_fraction"} <= own
    assert own <= _beam_flags(options_class), own - _beam_flags(options_class)
    assert not own & {"--verbose", "--version", "--help"}


def test_both_commands_options_load_together_and_nothing_is_required():
  # Beam adds every loaded PipelineOptions class to one parser: the shared
  # flags must not conflict, and a parse without the commands' flags must work.
  found = PipelineOptions([]).get_all_options()
  assert {"input", "output", "scales", "layout", "num_scales", "search_images"} <= set(found)
  view = PipelineOptions(["--runner=DirectRunner"]).view_as(preprocess.PreprocessOptions)
  assert view.output is None and view.input is None and view.layout == "tiles"


def test_options_given_to_beam_directly_as_a_flex_template_does():
  given = PipelineOptions(["--input=gs://b/ILSVRC", "--output=gs://b/out", "--scales=2,4,8",
                           "--backbone=VGG16", "--flip", "--num_scales=4"])
  view = given.view_as(preprocess.PreprocessOptions)
  assert (view.input, view.scales, view.backbone, view.flip) == ("gs://b/ILSVRC", "2,4,8",
                                                                  "VGG16", True)
  assert given.view_as(anchors.AnchorsOptions).num_scales == 4


def test_job_options_hold_the_parsed_flags_and_survive_json():
  args, rest = preprocess.build_parser().parse_with_beam(
      ["--input", "data", "--output", "out", "--scales", "2,4.5", "--flip",
       "--runner=DirectRunner", "--direct_num_workers=2"])
  job = options.job_options(rest, args, preprocess.build_parser())
  set_flags = job.get_all_options(drop_default=True)
  assert {"input": "data", "output": "out", "scales": "2,4.5", "flip": True,
          "runner": "DirectRunner", "direct_num_workers": 2}.items() <= set_flags.items()
  # As a runner ships them: JSON, then flags again.
  back = PipelineOptions.from_dictionary(json.loads(json.dumps(job.get_all_options())))
  view = back.view_as(preprocess.PreprocessOptions)
  assert (view.scales, view.ratios, view.flip, view.output) == ("2,4.5", "0.5,1,2", True, "out")
  # The strict parser's own value is unchanged: a tuple.
  assert args.scales == (2.0, 4.5)


def test_a_run_carries_its_flags_in_the_pipeline_options(tmp_path, monkeypatch):
  """rpn-preprocess builds its Pipeline with options that hold its flags."""
  seen = []
  real = preprocess.beam.Pipeline

  def recording(*a, **kw):
    seen.append(kw["options"])
    return real(*a, **kw)

  monkeypatch.setattr(preprocess.beam, "Pipeline", recording)
  root = str(tmp_path / "data")
  fixtures.write_dataset(root, num_images=1)
  helpers.preprocess(root, str(tmp_path / "out"), extra=["--scales", "2,4", "--seed", "3"])
  (job,) = seen
  view = job.view_as(preprocess.PreprocessOptions)
  assert (view.input, view.scales, view.seed, view.backbone) == (root, "2,4", 3, "TinyTestNet")
  assert job.view_as(StandardOptions).runner == "DirectRunner"
  assert job.view_as(SetupOptions).save_main_session is False


def test_unsupported_actions_are_refused():
  parser = argparse.ArgumentParser()
  parser.add_argument("--many", action="append")
  try:
    options.add_to_beam_parser(_BeamArgumentParser(), parser)
  except TypeError as e:
    assert "--many" in str(e)
  else:
    raise AssertionError("an append action was accepted")
