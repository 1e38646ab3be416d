"""Every everyday mistake ends the console script before it does any work:
exit code 2, exactly one line on stderr naming the flag, no traceback, and no
output file. Each case runs the installed console script in a subprocess."""
import json
import os
import shutil
import subprocess
import sys
from typing import Sequence

import pytest

from pipeline.model import registry
from tests import dataset_fixtures as fixtures
from tests import trainer_fixtures

BIN = os.path.dirname(sys.executable)


def run_script(command: str, args: Sequence[str], env=None) -> subprocess.CompletedProcess:
  return subprocess.run([os.path.join(BIN, command), *map(str, args)], capture_output=True,
                        text=True, timeout=600, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, flag: str,
                          *fragments: str) -> str:
  """Exit code 2, one stderr line "COMMAND: error: ..." naming `flag` and holding
  `fragments`, no traceback; returns the line."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  line = lines[0]
  assert line.startswith(f"{command}: error: "), line
  assert flag in line, line
  for fragment in fragments:
    assert fragment in line, (fragment, line)
  assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
  return line


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """An ILSVRC-layout root with DET/train and DET/val (2 images each), an empty
  DET/test (annotations only), an image set, and files to mistake for others."""
  root = tmp_path_factory.mktemp("fail_fast")
  data = str(root / "data")
  fixtures.write_dataset(data, "DET/train", num_images=2)
  fixtures.write_dataset(data, "DET/val", num_images=2, seed=1)
  os.makedirs(os.path.join(data, "Data", "DET", "test"))
  with open(os.path.join(data, "Data", "DET", "test", "notes.txt"), "w") as f:
    f.write("no images here\n")
  a_file = str(root / "a_file")
  with open(a_file, "w") as f:
    f.write("not a directory\n")
  with open(str(root / "garbage.weights.h5"), "wb") as f:
    f.write(b"\x00not an HDF5 file" * 64)
  open(str(root / "empty.txt"), "w").close()
  return {"root": str(root), "data": data, "file": a_file, "empty": str(root / "empty.txt"),
          "garbage_weights": str(root / "garbage.weights.h5")}


@pytest.fixture(scope="module")
def tiny_weights(dataset):
  """A weights file of the tiny test net: made for another backbone than VGG16."""
  from pipeline.model import backbone
  path = os.path.join(dataset["root"], "tiny.weights.h5")
  backbone.build_backbone(registry.TINY_BACKBONE, "none").save_weights(path)
  return path


def _preprocess_args(dataset, out, *extra):
  return ["--input", dataset["data"], "--output", out, "--backbone", "TinyTestNet",
          "--weights", "none", *extra]


def _replace(args, flag, value):
  args = list(args)
  args[args.index(flag) + 1] = value
  return args


# (id, args builder(dataset, out), flag, fragments of the message)
PREPROCESS_CASES = [
    ("input_missing", lambda d, o: _replace(_preprocess_args(d, o), "--input", "/nonexistent"),
     "--input /nonexistent", ["no such directory"]),
    ("input_without_data", lambda d, o: _replace(_preprocess_args(d, o), "--input", d["root"]),
     "--input", ["has no Data/ folder", "--images"]),
    ("split_typo", lambda d, o: _preprocess_args(d, o, "--split", "DET/trian"),
     "--split DET/trian", ["no such split", "found DET/test, DET/train, DET/val"]),
    ("split_without_images", lambda d, o: _preprocess_args(d, o, "--split", "DET/test"),
     "--split DET/test", ["no image files"]),
    ("images_missing", lambda d, o: ["--images", d["data"] + "/Data/DET/nope", "--annotations",
                                     d["data"] + "/Annotations/DET/train", "--output", o,
                                     "--weights", "none", "--backbone", "TinyTestNet"],
     "--images", ["no such directory"]),
    ("annotations_missing", lambda d, o: ["--images", d["data"] + "/Data/DET/train",
                                          "--annotations", d["data"] + "/Annotations/nope",
                                          "--output", o, "--weights", "none"],
     "--annotations", ["no such directory"]),
    ("image_set_missing", lambda d, o: _preprocess_args(d, o, "--image_set", "/nope/train.txt"),
     "--image_set /nope/train.txt", ["no such file"]),
    ("image_set_empty", lambda d, o: _preprocess_args(d, o, "--image_set", d["empty"]),
     "--image_set", ["lists no image id"]),
    ("weights_file_missing", lambda d, o: _replace(_preprocess_args(d, o, "--backbone", "VGG16"),
                                                   "--weights", "/nope/vgg16.weights.h5"),
     "--weights /nope/vgg16.weights.h5", ["no such file"]),
    ("weights_file_unreadable", lambda d, o: _replace(
        _preprocess_args(d, o, "--backbone", "VGG16"), "--weights", d["garbage_weights"]),
     "--weights", ["cannot be loaded into VGG16"]),
    ("weights_for_tiny_net", lambda d, o: _replace(_preprocess_args(d, o), "--weights",
                                                   d["garbage_weights"]),
     "--weights", ["has no pretrained weights"]),
    ("feature_layer_missing", lambda d, o: _preprocess_args(
        d, o, "--backbone", "VGG16", "--feature_layer", "block5_conv9"),
     "--feature_layer block5_conv9", ["no such layer", "block5_conv3"]),
    ("backbone_typo", lambda d, o: _preprocess_args(d, o, "--backbone", "VGG61"),
     "--backbone VGG61", ["VGG16"]),
    ("output_under_a_file", lambda d, o: _replace(_preprocess_args(d, o), "--output",
                                                  d["file"] + "/out"),
     "--output", ["is a file, not a directory"]),
    ("output_on_proc", lambda d, o: _replace(_preprocess_args(d, o), "--output", "/proc/rpn_out"),
     "--output /proc/rpn_out", ["cannot write"]),
    ("value_out_of_range", lambda d, o: _preprocess_args(d, o, "--fg_fraction", "1.5"),
     "--fg_fraction 1.5", ["(0, 1]"]),
    ("failure_budget_out_of_range", lambda d, o: _preprocess_args(
        d, o, "--max_failed_fraction", "1.5"), "--max_failed_fraction 1.5", ["[0, 1]"]),
    ("bad_choice", lambda d, o: _preprocess_args(d, o, "--tile_dtype", "float64"),
     "--tile_dtype", ["float16"]),
    ("hyphen_for_underscore", lambda d, o: _preprocess_args(d, o, "--tile-dtype", "float16"),
     "--tile-dtype", ["did you mean --tile_dtype?"]),
    ("unknown_flag", lambda d, o: _preprocess_args(d, o, "--layuot", "maps"),
     "--layuot", ["no such flag"]),
    ("beam_flag_typo", lambda d, o: _preprocess_args(d, o, "--runer", "DataflowRunner"),
     "--runer", ["did you mean --runner?"]),
    ("maps_with_a_target_flag", lambda d, o: _preprocess_args(d, o, "--layout", "maps",
                                                              "--scales", "1,2"),
     "--scales 1,2", ["drawn at training time", "rpn-train (--scales)"]),
    ("stray_value", lambda d, o: _preprocess_args(d, o) + ["float16"],
     "float16", ["unexpected argument"]),
]


@pytest.mark.parametrize("make_args,flag,fragments",
                         [case[1:] for case in PREPROCESS_CASES],
                         ids=[case[0] for case in PREPROCESS_CASES])
def test_preprocess_mistake(dataset, tmp_path, make_args, flag, fragments):
  out = tmp_path / "out"
  result = run_script("rpn-preprocess", make_args(dataset, str(out)))
  assert_one_line_error(result, "rpn-preprocess", flag, *fragments)
  assert not out.exists()
  assert os.listdir(tmp_path) == []  # nothing else written either


def test_preprocess_weights_of_another_backbone(dataset, tiny_weights, tmp_path):
  out = tmp_path / "out"
  args = _replace(_preprocess_args(dataset, str(out), "--backbone", "VGG16"), "--weights",
                  tiny_weights)
  line = assert_one_line_error(run_script("rpn-preprocess", args), "rpn-preprocess",
                               f"--weights {tiny_weights}", "does not fit VGG16",
                               "another backbone")
  assert "block1_conv1" in line  # the first layer that does not load
  assert not out.exists()


def test_preprocess_imagenet_weights_out_of_reach(dataset, tmp_path):
  """Keras cannot get the file (no cache, the network refused): the one line
  says how to get it, and nothing of Beam's runs."""
  env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras"), HTTPS_PROXY="http://127.0.0.1:9",
             https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
             http_proxy="http://127.0.0.1:9")
  out = tmp_path / "out"
  args = _replace(_preprocess_args(dataset, str(out), "--backbone", "VGG16"), "--weights",
                  "imagenet")
  assert_one_line_error(run_script("rpn-preprocess", args, env=env), "rpn-preprocess",
                        "--weights imagenet", "could not get the ImageNet weights of VGG16",
                        "--weights PATH")
  assert not out.exists()


def test_anchors_mistakes(dataset, tmp_path):
  out = tmp_path / "anchors"
  base = ["--input", dataset["data"], "--output", str(out), "--backbone", "TinyTestNet"]
  for args, flag, fragment in [
      (_replace(base, "--input", "/nonexistent"), "--input /nonexistent", "no such directory"),
      (base + ["--split", "DET/trian"], "--split DET/trian", "found DET/test, DET/train"),
      (base + ["--scale", "1,2"], "--scale", "did you mean --scales?"),
      (base + ["--feature_layer", "conv9"], "--feature_layer conv9", "no such layer"),
      (_replace(base, "--output", dataset["file"]), "--output", "is a file"),
      (base + ["--num_scales", "0"], "--num_scales 0", "must be >= 1"),
      (base + ["--max_failed_fraction", "2"], "--max_failed_fraction 2", "must be in [0, 1]"),
  ]:
    assert_one_line_error(run_script("rpn-anchors", args), "rpn-anchors", flag, fragment)
    assert not out.exists()


# ---------------------------------------------------------------------------
# The trainer's commands


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """A finished shard directory, one of another backbone, and an unfinished one."""
  root = tmp_path_factory.mktemp("fail_fast_shards")
  data = str(root / "data")
  manifest, _ = trainer_fixtures.write_shards(data, num_records=20, num_shards=2)
  other = str(root / "other")
  shutil.copytree(data, other)
  with open(os.path.join(other, "manifest.json"), "w") as f:
    json.dump(dict(manifest.to_json(), backbone="ResNet50"), f)
  unfinished = str(root / "unfinished")
  shutil.copytree(data, unfinished)
  os.remove(os.path.join(unfinished, "manifest.json"))
  maps = str(root / "maps")
  trainer_fixtures.write_map_shards(maps, [trainer_fixtures.map_image("d/a")])
  mixed = str(root / "mixed")
  trainer_fixtures.write_map_shards(mixed, [trainer_fixtures.map_image("d/a")])
  shutil.copy(os.path.join(data, manifest.shard_files[0]), mixed)
  other_job = str(root / "other_job")
  os.makedirs(other_job)
  with open(os.path.join(other_job, "manifest.json"), "w") as f:
    json.dump(dict(manifest.to_json(), backbone="ResNet50"), f)
  return {"data": data, "other": other, "unfinished": unfinished, "other_job": other_job,
          "mixed": mixed, "maps": maps}


def test_train_mistakes(shards, dataset, tmp_path):
  job = tmp_path / "job"
  base = ["--data", shards["data"], "--job_dir", str(job)]
  for args, flag, fragment in [
      (_replace(base, "--data", "/nonexistent"), "--data /nonexistent", "no such directory"),
      (_replace(base, "--data", shards["unfinished"]), "--data", "has no manifest.json"),
      (base + ["--val_data", shards["other"]], "--val_data", "backbone"),
      (_replace(base, "--job_dir", shards["other_job"]), "--job_dir", "holds a model of other"),
      (_replace(base, "--job_dir", dataset["file"] + "/job"), "--job_dir", "is a file"),
      (base + ["--epochs", "0"], "--epochs 0", "must be >= 1"),
      (base + ["--scales", "2,4"], "--scales 2,4", "is of layout tiles"),
      (_replace(base, "--data", shards["mixed"]), "--data", "mixed layouts"),
      (_replace(base, "--data", shards["maps"]) + ["--anchors_json", "/nope.json"],
       "--anchors_json /nope.json", "no such file"),
      (_replace(base, "--data", shards["maps"]) + ["--fg_fraction", "2"], "--fg_fraction 2.0",
       "(0, 1]"),
      (base + ["--learning-rate", "0.01"], "--learning-rate", "did you mean --learning_rate?"),
      (["--job_dir", str(job)], "--data", "required"),
  ]:
    assert_one_line_error(run_script("rpn-train", args), "rpn-train", flag, fragment)
    assert not job.exists()
  assert sorted(os.listdir(shards["other_job"])) == ["manifest.json"]


def test_propose_mistakes(untrained_job, val_dataset, dataset, shards, tmp_path):
  out = tmp_path / "proposals"
  base = ["--job_dir", untrained_job, "--input", val_dataset, "--output", str(out)]
  for args, flag, fragment in [
      (_replace(base, "--job_dir", "/nonexistent"), "--job_dir /nonexistent", "no such"),
      (_replace(base, "--job_dir", shards["other_job"]), "--job_dir", "has no rpn.weights.h5"),
      (_replace(base, "--input", "/nonexistent"), "--input /nonexistent", "no such directory"),
      (base + ["--split", "DET/vall"], "--split DET/vall", "found DET/val"),
      (["--job_dir", untrained_job, "--images", str(tmp_path / "*.JPEG"), "--output", str(out)],
       "--images", "no file matches"),
      (base + ["--weights", "/nope/w.h5"], "--weights /nope/w.h5", "no such file"),
      (_replace(base, "--output", dataset["file"]), "--output", "is a file"),
      (base + ["--nms_thresh", "0"], "--nms_thresh 0", "(0, 1]"),
      (base + ["--max_failed_fraction", "-0.1"], "--max_failed_fraction -0.1", "[0, 1]"),
      (base + ["--model", "best"], "--model best", "has no best/"),
      (base + ["--top_n", "5"], "--top_n", "no such flag"),
  ]:
    assert_one_line_error(run_script("rpn-propose", args), "rpn-propose", flag, fragment)
    assert not out.exists()


def test_propose_weights_for_another_backbone(untrained_job, val_dataset, tiny_weights,
                                               tmp_path):
  """Found when the backbone loads (rpn-propose loads it itself), before any output."""
  out = tmp_path / "proposals"
  result = run_script("rpn-propose", ["--job_dir", untrained_job, "--input", val_dataset,
                                      "--output", str(out), "--weights", tiny_weights])
  assert_one_line_error(result, "rpn-propose", f"--weights {tiny_weights}", "MobileNetV2")
  assert not out.exists()


def test_evaluate_mistakes(proposals, val_dataset, tmp_path):
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  shutil.copy(os.path.join(proposals, "errors.jsonl"), unfinished)
  out = tmp_path / "recall"
  base = ["--proposals", proposals, "--input", val_dataset, "--output", str(out)]
  for args, flag, fragment in [
      (_replace(base, "--proposals", "/nonexistent"), "--proposals /nonexistent", "no such"),
      (_replace(base, "--proposals", str(unfinished)), "--proposals",
       "has no proposals (proposals-*-of-*.jsonl or proposals.jsonl): not the --output of an "
       "rpn-propose run"),
      (base + ["--split", "DET/vall"], "--split DET/vall", "found DET/val"),
      (base + ["--top_n", "0"], "--top_n 0", ">= 1"),
      (_replace(base, "--output", "/proc/recall"), "--output /proc/recall", "cannot write"),
  ]:
    assert_one_line_error(run_script("rpn-evaluate", args), "rpn-evaluate", flag, fragment)
    assert not out.exists()
  assert sorted(os.listdir(unfinished)) == ["errors.jsonl"]


def test_draw_mistakes(shards, dataset, tmp_path):
  out = tmp_path / "pictures"
  base = ["--shards", shards["data"], "--input", dataset["data"], "--output", str(out)]
  for args, flag, fragment in [
      (_replace(base, "--shards", "/nonexistent"), "--shards /nonexistent", "no such"),
      (_replace(base, "--shards", shards["unfinished"]), "--shards", "not found"),
      (base + ["--split", "DET/trian"], "--split DET/trian", "no such split"),
      (base + ["--count", "0"], "--count 0", ">= 1"),
      (_replace(base, "--output", dataset["file"]), "--output", "is a file"),
  ]:
    assert_one_line_error(run_script("rpn-draw", args), "rpn-draw", flag, fragment)
    assert not out.exists()
