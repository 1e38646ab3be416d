"""pipeline.commands.space: the output size estimated before the run, against what the
run writes, and the refusal when the disk clearly lacks the room."""
import os

import pytest

from pipeline.beam import preprocess as preprocess_beam
from pipeline.commands import preprocess as run
from pipeline.commands import space
from pipeline.model import registry
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("space"))
  fixtures.write_dataset(root, num_images=8, seed=3)
  return root


def _cfg(root, output, *extra):
  args, beam_args = run.build_parser().parse_with_beam(
      ["--input", root, "--output", output, "--backbone", helpers.TINY, "--weights", "none",
       *extra])
  return run.config_from_args(args, preprocess_beam.runner_setup(beam_args))


def _written(output):
  return sum(os.path.getsize(os.path.join(output, n)) for n in os.listdir(output)
             if n.startswith(("tiles-", "maps-")))


@pytest.mark.parametrize("layout,levels", [("tiles", []), ("maps", []),
                                           ("tiles", ["--feature_layers", "conv1,conv2"]),
                                           ("maps", ["--feature_layers", "conv1,conv2"])],
                         ids=["tiles", "maps", "tiles_levels", "maps_levels"])
def test_the_estimate_is_near_what_the_run_writes(dataset, tmp_path, layout, levels):
  output = str(tmp_path / "out")
  cfg = _cfg(dataset, output, "--layout", layout, *levels)
  spec = registry.backbone_spec(helpers.TINY)
  found = space.estimate(cfg, spec.channels, spec.min_input_side)
  assert found.images == 8 and found.sampled == 8
  helpers.preprocess(dataset, output, extra=["--layout", layout, *levels])
  written = _written(output)
  print(f"{layout}: estimated {found.total}, written {written}")
  # tiles: every point with an inside anchor counted a record (an upper bound);
  # maps: the feature maps exactly, the record overhead approximately.
  assert 0.6 * found.total <= written <= 1.05 * found.total


def test_refused_only_when_clearly_short(dataset, tmp_path):
  cfg = _cfg(dataset, str(tmp_path / "out"))
  found = space.Estimate(images=100, sampled=10, bytes_per_image=1e6)
  assert space.check(cfg, found, free=int(0.6e8)) is None  # the estimate may be high
  problem = space.check(cfg, found, free=int(0.4e8))
  assert problem == ("needs about 100.0 MB (100 images x about 1.0 MB) but its disk has "
                     "40.0 MB free: free space, write to another --output, or pass "
                     "--no_space_check if the estimate is wrong")
  gzip = _cfg(dataset, str(tmp_path / "out"), "--compression", "GZIP")
  assert space.check(gzip, found, free=1) is None  # GZIP's ratio is not predicted


def test_the_start_line_and_the_refusal_in_the_run(dataset, tmp_path, monkeypatch, capsys):
  output = str(tmp_path / "out")
  monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
  with pytest.raises(ValueError, match=r"^--output .*: needs about .* but its disk has 1.0 KB "
                                       r"free"):
    helpers.preprocess(dataset, output)
  assert capsys.readouterr().out.startswith("output: about ")
  assert not os.path.exists(output)  # refused before anything was written
  manifest = helpers.preprocess(dataset, output, extra=["--no_space_check"])
  assert manifest.counts["images_ok"] >= 1


def test_human():
  assert [space.human(n) for n in (999, 1500, 2.5e9)] == ["999 B", "1.5 KB", "2.5 GB"]
