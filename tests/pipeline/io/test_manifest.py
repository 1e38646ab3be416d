"""Tests of pipeline/io/manifest.py: building, writing, reading and checking manifest.json.

Every error is a ManifestError (a ValueError) whose message names the file and
what is wrong.
"""
import dataclasses
import json
import os
import shutil

import pytest

from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.model import backbone as backbone_lib
from tests import trainer_fixtures as fixtures


def _copy(directory, tmp_path, name="copy"):
  return shutil.copytree(directory, str(tmp_path / name))


def _write_json(directory, content):
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, config.MANIFEST_NAME)
  with open(path, "w") as f:
    json.dump(content, f)
  return path


LOADS = (manifest_lib.Manifest.load,)


def test_manifest_errors_name_the_file(shard_dir, tmp_path):
  directory, manifest, _ = shard_dir
  for load in LOADS:
    with pytest.raises(manifest_lib.ManifestError, match="manifest.json: not found"):
      load(str(tmp_path))
  # A listed shard is missing.
  missing = _copy(directory, tmp_path, "missing")
  victim = manifest.shard_files[1]
  os.remove(os.path.join(missing, victim))
  for load in LOADS:
    with pytest.raises(manifest_lib.ManifestError,
                       match=f"{victim}: shard listed in .* missing"):
      load(missing)
  # A stale shard of another run lies beside the listed ones.
  stale = _copy(directory, tmp_path, "stale")
  stale_name = "tiles-00000-of-00005.tfrecord"
  shutil.copy(os.path.join(stale, manifest.shard_files[0]), os.path.join(stale, stale_name))
  for load in LOADS:
    with pytest.raises(manifest_lib.ManifestError, match=f"not listed.*{stale_name}"):
      load(stale)
  # Values: shard count, dtype, compression, missing keys.
  for change, message in (({"num_shards": 4}, "shard_files lists 3 files but num_shards is 4"),
                          ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
                          ({"compression": "ZLIB"}, "compression 'ZLIB'"),
                          ({"counts": None, "anchor": None}, None)):
    bad = _copy(directory, tmp_path, f"bad{len(os.listdir(tmp_path))}")
    content = dict(manifest.to_json(), **change)
    if message is None:
      del content["counts"], content["anchor"]
      message = r"missing keys \['anchor', 'counts'\]"
    with open(os.path.join(bad, "manifest.json"), "w") as f:
      json.dump(content, f)
    for load in LOADS:
      with pytest.raises(manifest_lib.ManifestError, match=f"manifest.json: {message}"):
        load(bad)


def test_check_compatible_names_the_differing_key():
  a_json = fixtures.make_manifest()
  a = manifest_lib.Manifest.from_json(a_json)
  a.check_compatible(manifest_lib.Manifest.from_json(fixtures.make_manifest(
      dtype="float16", compression="GZIP", num_shards=5)))
  for key, value in (("backbone", "ResNet50"), ("weights", "imagenet"),
                     ("feature_channels", 16),
                     ("anchor", dict(a.anchor, scales=[2, 4, 8]))):
    b_json = dict(a_json, **{key: value})
    with pytest.raises(manifest_lib.ManifestError, match=f"--val_data x: {key} is"):
      a.check_compatible(manifest_lib.Manifest.from_json(b_json), "--val_data x")
  # As written: a key one manifest lacks differs from its default in the other.
  with pytest.raises(manifest_lib.ManifestError, match="stride_mode is None"):
    a.check_compatible(manifest_lib.Manifest.from_json(
        {k: v for k, v in a_json.items() if k != "stride_mode"}))



# ---------------------------------------------------------------------------
# build and write: what rpn-preprocess records


def _config(**output_changes):
  return config.PreprocessConfig(
      images_dir="/d/Data/DET/train", annotations_dir="/d/Annotations/DET/train", output="/o",
      backbone=config.BackboneConfig(backbone="TinyTestNet", weights="none"),
      output_format=config.OutputConfig(**output_changes), split="DET/train", input_root="/d")


def test_build_records_feature_layers_only_for_several_levels():
  cfg = _config()
  cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone,
                                                              feature_layer="conv1"))
  one = manifest_lib.build(cfg, {"records": 1}, ["tiles-00000-of-00001.tfrecord"], 16, 32)
  assert "feature_layers" not in one.to_json() and one.levels == ("conv1",)
  levels = dataclasses.replace(cfg, backbone=dataclasses.replace(
      cfg.backbone, feature_layers=("conv1", "conv2")))
  two = manifest_lib.build(levels, {"records": 1}, ["tiles-00000-of-00001.tfrecord"], 16, 32)
  assert two.to_json()["feature_layers"] == ["conv1", "conv2"]
  assert two.levels == ("conv1", "conv2") and two.num_levels == 2
  # a one-level model does not take data of two levels (nor the other way round)
  with pytest.raises(manifest_lib.ManifestError, match="feature_layers is"):
    one.check_compatible(two)


def test_build_records_the_config_and_the_run():
  counts = {"records": 7, "images_ok": 2, "images_found": 3}
  shards = ["tiles-00001-of-00002.tfrecord.gz", "tiles-00000-of-00002.tfrecord.gz"]
  manifest = manifest_lib.build(_config(num_shards=2, compression="GZIP", tile_dtype="float16"),
                                counts, shards, 16, 32)
  # what is written passes its own reader's checks
  manifest_lib.validate(manifest.to_json(), "built")
  assert manifest.version == config.MANIFEST_VERSION
  assert (manifest.backbone, manifest.weights, manifest.weights_seed) == (
      "TinyTestNet", "none", 0)
  assert (manifest.feature_channels, manifest.min_input_side) == (16, 32)
  assert (manifest.dtype, manifest.compression) == ("float16", "GZIP")
  assert list(manifest.shard_files) == sorted(shards) and manifest.num_shards == 2
  assert manifest.shard_pattern == "tiles-?????-of-00002.tfrecord.gz"
  assert manifest.anchor == {"scales": [3.0, 6.0, 12.0], "ratios": [0.5, 1.0, 2.0],
                             "order": "ratio_major", "num_anchors": 9}
  assert manifest.targets == config.to_dict(config.TargetConfig())
  assert manifest.anchor_config == config.AnchorConfig()
  assert manifest.target_config == config.TargetConfig()
  assert manifest.resize == manifest_lib.Resize(min_side=None, max_side=None)
  assert manifest.max_pixels == config.DEFAULT_MAX_PIXELS
  assert manifest.input == {"root": "/d", "split": "DET/train", "images": "/d/Data/DET/train",
                            "annotations": "/d/Annotations/DET/train", "image_set": None,
                            "missing_annotations": "skip"}
  assert manifest.max_shard_mb is None  # fixed shards: no cap
  assert manifest.records_shuffled is False
  assert manifest.counts == counts and list(manifest.counts) == sorted(counts)
  json.dumps(manifest.to_json())  # JSON-ready
  # Runner-decided shards record their size cap.
  runner = manifest_lib.build(_config(num_shards=0, max_shard_mb=64.0), counts,
                              ["tiles-00000-of-00001.tfrecord"], 16, 32)
  assert runner.max_shard_mb == 64.0 and runner.num_shards == 1


def test_to_json_is_the_dict_rpn_preprocess_writes_and_from_json_reads_it_back():
  counts = {"records": 7, "images_ok": 2, "images_found": 3}
  names = ["tiles-00001-of-00002.tfrecord", "tiles-00000-of-00002.tfrecord"]
  described = [{"file": names[0], "bytes": 300, "records": 3},
               {"file": names[1], "bytes": 700, "records": 4}]
  cfg = config.PreprocessConfig(
      images_dir="/d/Data/DET/train", annotations_dir="/d/Annotations/DET/train", output="/o",
      backbone=config.BackboneConfig(backbone="TinyTestNet", weights="none", min_side=600,
                                     max_side=1000, feature_layer="conv1"),
      anchors=config.AnchorConfig(scales=(2.0, 4.0), ratios=(1.0,)),
      targets=config.TargetConfig(batch_size=64, seed=3),
      output_format=config.OutputConfig(num_shards=2), split="DET/train", input_root="/d")
  manifest = manifest_lib.build(cfg, counts, names, 16, 32, shards=described,
                                backbone_threads={"1": 2})
  # The dict of manifest.json, key for key and in its order (as rpn-preprocess always wrote it).
  expected = {
      "version": 1, "created_by": "rpn-preprocess", "layout": "tiles",
      "backbone": "TinyTestNet", "feature_layer": "conv1", "weights": "none", "weights_seed": 3,
      "feature_channels": 16, "tile_size": 3, "dtype": "float32", "compression": "NONE",
      "anchor": {"scales": [2.0, 4.0], "ratios": [1.0], "order": "ratio_major",
                 "num_anchors": 2},
      "targets": {"fg_iou_thresh": 0.7, "bg_iou_thresh": 0.3, "batch_size": 64,
                  "fg_fraction": 0.5, "seed": 3},
      "stride_mode": "ratio", "resize": {"min_side": 600, "max_side": 1000},
      "min_input_side": 32, "padding": manifest_lib.PADDING_NOTE,
      "max_pixels": config.DEFAULT_MAX_PIXELS,
      "input": {"root": "/d", "split": "DET/train", "images": "/d/Data/DET/train",
                "annotations": "/d/Annotations/DET/train", "image_set": None,
                "missing_annotations": "skip"},
      "shard_pattern": "tiles-?????-of-00002.tfrecord", "num_shards": 2,
      "max_shard_mb": None, "records_shuffled": False, "shard_files": sorted(names),
      "counts": {"images_found": 3, "images_ok": 2, "records": 7},
      "backbone_threads": {"1": 2},
      "shards": [described[1], described[0]],
  }
  written = manifest.to_json()
  assert written == expected and list(written) == list(expected)
  assert json.dumps(written) == json.dumps(expected)  # byte for byte
  again = manifest_lib.Manifest.from_json(written)
  assert again == manifest and again.to_json() == expected
  assert list(again.to_json()) == list(expected)
  assert manifest.anchor_config == cfg.anchors and manifest.target_config == cfg.targets
  assert manifest.resize == manifest_lib.Resize(600, 1000) and manifest.num_anchors == 2
  # Keys this code does not know (rpn-train's "sampling") stay where they were.
  trained = dict(expected, sampling="per epoch")
  assert list(manifest_lib.Manifest.from_json(trained).to_json().items()) == list(
      trained.items())


def test_an_older_manifest_loads_with_the_defaults(tmp_path):
  # Before layout, feature_layer, stride_mode, resize, max_pixels, shards,
  # backbone_threads and weights_seed were written.
  old = fixtures.make_manifest()
  for key in ("stride_mode", "resize", "weights_seed", "min_input_side"):
    del old[key]
  for key in ("layout", "feature_layer", "max_pixels", "shards", "backbone_threads",
              "created_by", "padding", "input", "shard_pattern", "max_shard_mb"):
    assert key not in old
  manifest = manifest_lib.Manifest.from_json(old)
  assert manifest.layout == config.TILES_LAYOUT and not manifest.is_maps
  assert manifest.feature_layer is None and manifest.stride_mode == "ratio"
  assert manifest.resize == manifest_lib.Resize(None, None)
  assert manifest.max_pixels == config.DEFAULT_MAX_PIXELS
  assert manifest.shards is None and manifest.backbone_threads == {}
  assert manifest.weights_seed == 0 and manifest.min_input_side is None
  assert manifest.created_by is None and manifest.input == {}
  assert manifest.max_shard_mb is None and manifest.records_shuffled is False
  assert manifest.anchor_config == config.AnchorConfig()
  assert manifest.target_config == config.TargetConfig()
  assert manifest.to_json() == old and list(manifest.to_json()) == list(old)  # nothing added
  # from disk, beside its shards
  directory = str(tmp_path / "old")
  _write_json(directory, old)
  for name in old["shard_files"]:
    open(os.path.join(directory, name), "wb").close()
  assert manifest_lib.Manifest.load(directory) == manifest
  assert manifest_lib.Manifest.load(directory).to_json() == old


def test_build_lists_each_shards_bytes_and_records_in_shard_files_order():
  names = ["tiles-00001-of-00002.tfrecord", "tiles-00000-of-00002.tfrecord"]
  described = [{"file": names[0], "bytes": 300, "records": 3},
               {"file": names[1], "bytes": 700, "records": 4}]
  manifest = manifest_lib.build(_config(num_shards=2), {"records": 7}, names, 16, 32,
                                shards=described)
  manifest_lib.validate(manifest.to_json(), "built")
  assert list(manifest.shard_files) == sorted(names)
  assert manifest.shards == (manifest_lib.ShardInfo(names[1], 700, 4),
                             manifest_lib.ShardInfo(names[0], 300, 3))
  assert manifest.to_json()["shards"] == [described[1], described[0]]
  # an older manifest
  assert manifest_lib.Manifest.from_json(fixtures.make_manifest()).shards is None
  without = manifest_lib.build(_config(num_shards=2), {}, names, 16, 32)
  assert without.shards is None and "shards" not in without.to_json()
  with pytest.raises(ValueError, match="do not match the shard files"):
    manifest_lib.build(_config(num_shards=2), {}, names, 16, 32, shards=described[:1])


def test_write_then_load_round_trip(tmp_path):
  directory = str(tmp_path / "out")
  manifest = manifest_lib.build(_config(num_shards=2), {"records": 0}, [
      "tiles-00000-of-00002.tfrecord", "tiles-00001-of-00002.tfrecord"], 16, 32)
  os.makedirs(directory)
  for path in manifest.shard_paths(directory):
    open(path, "wb").close()
  manifest_lib.write(directory, manifest)
  assert manifest_lib.path_in(directory) == os.path.join(directory, "manifest.json")
  assert sorted(os.listdir(directory)) == ["manifest.json", "tiles-00000-of-00002.tfrecord",
                                           "tiles-00001-of-00002.tfrecord"]  # no temp file left
  assert manifest_lib.Manifest.load(directory) == manifest
  assert manifest_lib.Manifest.read(manifest_lib.path_in(directory)) == manifest
  with open(manifest_lib.path_in(directory)) as f:
    assert json.load(f) == manifest.to_json()


def test_shard_suffix_and_paths():
  assert manifest_lib.shard_suffix("GZIP") == ".tfrecord.gz"
  assert manifest_lib.shard_suffix("NONE") == ".tfrecord"
  manifest = manifest_lib.Manifest.from_json(fixtures.make_manifest(num_shards=2))
  assert manifest.shard_paths("/d") == [
      "/d/tiles-00000-of-00002.tfrecord", "/d/tiles-00001-of-00002.tfrecord"]


# ---------------------------------------------------------------------------
# read and validate


def test_read_names_the_file(tmp_path):
  path = str(tmp_path / "manifest.json")
  for read in (manifest_lib.Manifest.read,):
    with pytest.raises(manifest_lib.ManifestError, match=f"{path}: not found"):
      read(path)
    with open(path, "w") as f:
      f.write("{not json")
    with pytest.raises(manifest_lib.ManifestError, match=f"{path}: not valid JSON"):
      read(path)
    with open(path, "w") as f:
      f.write("[1, 2]")
    with pytest.raises(manifest_lib.ManifestError, match=f"{path}: not a JSON object"):
      read(path)
    os.remove(path)
  # A job directory's manifest: read does not look for shards beside it.
  _write_json(str(tmp_path), fixtures.make_manifest())
  assert manifest_lib.Manifest.read(path).to_json() == fixtures.make_manifest()


@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "version 2, this code reads version 1"),
    ({"tile_size": 5}, "tile_size 5, the RPN head takes 3x3 tiles"),
    ({"anchor": {"scales": [1.0]}}, "anchor has no num_anchors"),
    ({"anchor": {"scales": [1.0, 2.0], "ratios": [1.0], "num_anchors": 9}},
     "anchor num_anchors 9 != 2 scales x 1 ratios"),
    ({"dtype": "int8"}, "dtype 'int8' not in"),
    ({"feature_layer": "a", "feature_layers": ["b", "c"]},
     r"feature_layers \['b', 'c'\] is not a list of two or more layer names starting with "
     r"feature_layer 'a'"),
    ({"feature_layer": "a", "feature_layers": ["a"]}, "feature_layers"),
])
def test_validate_refuses_with_the_value(change, message):
  with pytest.raises(manifest_lib.ManifestError, match=f"^m.json: {message}"):
    manifest_lib.validate(fixtures.make_manifest(**change), "m.json")
  with pytest.raises(manifest_lib.ManifestError, match=f"^m.json: {message}"):
    manifest_lib.Manifest.from_json(fixtures.make_manifest(**change), "m.json")


_SHARD0 = "tiles-00000-of-00002.tfrecord"


@pytest.mark.parametrize("shards, message", [
    ([{"file": _SHARD0, "bytes": 1, "records": 1}],
     r"shards must list one entry per shard file \(2\)"),
    ({"file": _SHARD0}, r"shards must list one entry per shard file"),
    ([{"file": "tiles-00001-of-00002.tfrecord", "bytes": 1, "records": 1}] * 2,
     rf"shards\[0\] is .*, expected \{{'file': '{_SHARD0}', 'bytes': int"),
    ([{"file": _SHARD0, "bytes": 1}] * 2, r"shards\[0\] is"),
    ([{"file": _SHARD0, "bytes": -1, "records": 1}] * 2, r"shards\[0\] is"),
    ([{"file": _SHARD0, "bytes": "1", "records": 1}] * 2, r"shards\[0\] is"),
], ids=["too_few", "not_a_list", "wrong_file", "no_records", "negative", "not_an_int"])
def test_validate_refuses_bad_shard_entries(shards, message):
  with pytest.raises(manifest_lib.ManifestError, match=f"^m.json: {message}"):
    manifest_lib.validate(fixtures.make_manifest(num_shards=2, shards=shards), "m.json")


def test_num_anchors_max_pixels_and_resize():
  manifest = manifest_lib.Manifest.from_json(fixtures.make_manifest())
  assert manifest.num_anchors == 9
  assert manifest_lib.Manifest.from_json(
      fixtures.make_manifest(anchor={"num_anchors": "4"})).num_anchors == 4
  assert manifest.max_pixels == config.DEFAULT_MAX_PIXELS
  assert manifest_lib.Manifest.from_json(
      fixtures.make_manifest(max_pixels=1000)).max_pixels == 1000
  assert manifest_lib.Manifest.from_json(fixtures.make_manifest(
      resize={"min_side": 600, "max_side": 1000})).resize == manifest_lib.Resize(600, 1000)


def test_num_anchors_and_the_older_manifests_defaults():
  manifest = fixtures.make_manifest()
  assert manifest_lib.Manifest.from_json(manifest).num_anchors == 9
  assert manifest_lib.Manifest.from_json(
      dict(manifest, anchor={"num_anchors": "4"})).num_anchors == 4
  # Older manifests without max_pixels or resize: the defaults.
  manifest.pop("resize"), manifest.pop("max_pixels", None)
  older = manifest_lib.Manifest.from_json(manifest)
  assert older.max_pixels == config.DEFAULT_MAX_PIXELS
  assert older.resize == manifest_lib.Resize(None, None)


def test_replaced_sets_keys_as_a_dict_update_would():
  manifest = manifest_lib.Manifest.from_json(fixtures.make_manifest())
  anchor = {"scales": [2.0], "ratios": [1.0], "num_anchors": 1}
  changed = manifest.replaced(anchor=anchor, sampling="per epoch")
  assert changed.to_json() == dict(manifest.to_json(), anchor=anchor, sampling="per epoch")
  assert list(changed.to_json()) == list(manifest.to_json()) + ["sampling"]
  assert changed.num_anchors == 1 and manifest.num_anchors == 9
  with pytest.raises(manifest_lib.ManifestError, match="anchor has no num_anchors"):
    manifest.replaced(anchor={"scales": [2.0]})


# ---------------------------------------------------------------------------
# backbone.check_manifest: where the backbone is run again (rpn-propose, rpn-draw)


def test_check_manifest_accepts_what_the_backbone_computes():
  read = manifest_lib.Manifest.from_json
  backbone_lib.check_manifest(read(fixtures.make_manifest(channels=1536)), "m")  # IRv2
  backbone_lib.check_manifest(read(fixtures.job_manifest()), "m")  # MobileNetV2, 1280 channels


@pytest.mark.parametrize("change, message", [
    ({"backbone": "ResNet9000"}, "unknown backbone 'ResNet9000'"),
    ({"feature_channels": 1280},
     r"feature_channels 1280 does not match backbone InceptionResNetV2 \(1536 channels\)"),
    ({"min_input_side": 32}, "min_input_side 32 is below the 75 px backbone InceptionResNetV2"),
    ({"stride_mode": "fixed"}, "stride_mode 'fixed' is not supported"),
])
def test_check_manifest_refuses_what_does_not_fit(change, message):
  manifest = fixtures.make_manifest(channels=1536, **change)  # InceptionResNetV2, 75 px
  without = fixtures.make_manifest(channels=1536)
  del without["min_input_side"]
  typed = manifest_lib.Manifest.from_json
  with pytest.raises(manifest_lib.ManifestError, match=f"^m.json: {message}"):
    backbone_lib.check_manifest(typed(manifest), "m.json")
  with pytest.raises(manifest_lib.ManifestError, match=r"missing keys \['min_input_side'\]"):
    backbone_lib.check_manifest(typed(without), "m.json")
