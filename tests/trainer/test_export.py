"""rpn-export: a SavedModel that a plain TensorFlow process loads and serves,
whose proposals are rpn-propose's on images of several sizes."""
import functools
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.core import config
from pipeline.io import ilsvrc
from tests import dataset_fixtures as fx
from tests import trainer_fixtures as fixtures
from trainer import cli as trainer_cli
from trainer import formats, propose

PROPOSAL = config.ProposalConfig(post_nms_top_n=100, min_size=4)

# Loads the SavedModel in a fresh Python in which this project cannot be
# imported, serves every image file given, saves the outputs.
FRESH_SERVE = fixtures.NO_PROJECT + """
import numpy as np, tensorflow as tf
model_dir, out_path, *images = sys.argv[1:]
serve = tf.saved_model.load(model_dir).signatures["serving_default"]
out = {}
for k, path in enumerate(images):
  with open(path, "rb") as f:
    result = serve(image_bytes=tf.constant(f.read()))
  for key, value in result.items():
    out[f"{k}_{key}"] = value.numpy()
np.savez(out_path, **out)
"""


def _images(val_dataset, tmp_path):
  """Image files of several sizes and encodings: the val images (one padded
  under the backbone's least side), a PNG and a larger JPEG."""
  paths = [os.path.join(val_dataset, "Data", "DET", "val", image_id + ".JPEG")
           for image_id, *_ in fixtures.VAL_IMAGES]
  rng = np.random.default_rng(5)
  for name, (width, height), fmt in (("wide.png", (130, 70), "PNG"),
                                     ("large.jpg", (200, 150), "JPEG")):
    buffer = io.BytesIO()
    Image.fromarray(fx.random_image(rng, width, height, [(20, 10, 90, 60)])).save(buffer, fmt)
    path = str(tmp_path / name)
    with open(path, "wb") as f:
      f.write(buffer.getvalue())
    paths.append(path)
  return paths


def _serve_fresh(model_dir, paths, out_path):
  child = subprocess.run(
      [sys.executable, "-c", FRESH_SERVE, model_dir, out_path, *paths],
      cwd=os.path.dirname(out_path), capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert child.returncode == 0, child.stderr[-3000:]
  return dict(np.load(out_path))


@functools.lru_cache(maxsize=2)
def _proposer(job):
  return propose.Proposer(job, proposal_config=PROPOSAL)


def _propose(job, path):
  """rpn-propose's proposals of one image file, in its pixels."""
  proposer = _proposer(job)
  image, gt, _, _ = ilsvrc.load_example(path, None)
  frame, _, box_scale = proposer.prepare(image, gt)
  boxes, scores = proposer(frame, box_scale)
  return formats.image_boxes(boxes, box_scale, image.shape[1], image.shape[0]), scores


def _export(job, output, *extra):
  return trainer_cli.export_main(["--job_dir", job, "--output", output, "--post_nms_top_n",
                                  str(PROPOSAL.post_nms_top_n), "--min_size",
                                  str(PROPOSAL.min_size), *extra])


def test_saved_model_serves_rpn_propose_proposals_without_the_project(
    untrained_job, val_dataset, tmp_path):
  model_dir = str(tmp_path / "export")
  assert _export(untrained_job, model_dir) == 0
  with open(os.path.join(model_dir, "export.json")) as f:
    settings = json.load(f)
  assert settings["proposal"]["post_nms_top_n"] == 100 and settings["feature_levels"] == 1
  paths = _images(val_dataset, tmp_path)
  served = _serve_fresh(model_dir, paths, str(tmp_path / "served.npz"))
  sizes = set()
  for k, path in enumerate(paths):
    boxes, scores = _propose(untrained_job, path)
    sizes.add(Image.open(path).size)
    got_boxes, got_scores = served[f"{k}_boxes"], served[f"{k}_scores"]
    assert int(served[f"{k}_num_proposals"]) == len(got_boxes) == len(boxes), path
    assert got_boxes.dtype == np.float32 and got_scores.dtype == np.float32
    np.testing.assert_allclose(got_scores, scores, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(got_boxes[:100], boxes[:100], atol=1e-3, err_msg=path)
  assert len(sizes) == len(paths)  # every image of another size


def test_a_resizing_job_serves_boxes_in_the_image_pixels(val_dataset, tmp_path):
  # The frame is resized in the graph (TensorFlow's filter, not Pillow's):
  # boxes come back in the image's pixels, within it, best first.
  job = str(tmp_path / "job")
  fixtures.save_job(job, fixtures.job_manifest(resize={"min_side": 48, "max_side": 72}),
                    fixtures.JOB_CHANNELS, fixtures.JOB_HIDDEN)
  import tensorflow as tf  # served here: loading without the project is tested above
  model_dir = str(tmp_path / "export")
  assert _export(job, model_dir) == 0
  serve = tf.saved_model.load(model_dir).signatures["serving_default"]
  for path in _images(val_dataset, tmp_path):
    width, height = Image.open(path).size
    with open(path, "rb") as f:
      served = serve(image_bytes=tf.constant(f.read()))
    boxes, scores = served["boxes"].numpy(), served["scores"].numpy()
    want_boxes, want_scores = _propose(job, path)
    assert 0 < len(boxes) <= 100 and (np.diff(scores) <= 0).all()
    assert (boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    # Close to rpn-propose's though the resized pixels differ a little.
    assert abs(len(boxes) - len(want_boxes)) <= max(2, len(want_boxes) // 5), path
    np.testing.assert_allclose(scores[0], want_scores[0], atol=0.05, err_msg=path)


def test_bad_export_flags_are_one_line(untrained_job, tmp_path, capsys):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  for flags, problem in (
      (["--output", str(tmp_path / "full")], "is not empty"),
      (["--output", str(tmp_path / "o"), "--model", "best"], "has no best/"),
      (["--output", str(tmp_path / "o"), "--nms_thresh", "0"], "must be in (0, 1]")):
    code = trainer_cli.export_main(["--job_dir", untrained_job, *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem in err, err
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("anchors", ["inside"])
def test_inside_anchors_are_served_too(untrained_job, val_dataset, tmp_path, anchors):
  import tensorflow as tf
  model_dir = str(tmp_path / "export")
  assert _export(untrained_job, model_dir, "--anchors", anchors) == 0
  serve = tf.saved_model.load(model_dir).signatures["serving_default"]
  path = _images(val_dataset, tmp_path)[0]
  with open(path, "rb") as f:
    out = serve(image_bytes=tf.constant(f.read()))
  proposer = propose.Proposer(untrained_job, proposal_config=config.ProposalConfig(
      post_nms_top_n=100, min_size=4, anchors=anchors))
  image, gt, _, _ = ilsvrc.load_example(path, None)
  frame, _, box_scale = proposer.prepare(image, gt)
  boxes, scores = proposer(frame, box_scale)
  np.testing.assert_allclose(out["boxes"].numpy(), boxes, atol=1e-3)
  np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-5)
