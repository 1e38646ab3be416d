"""Tests of bench/real_photos.py's bookkeeping (the runs themselves are `make quality`)."""
import math
import os
import pathlib

import numpy as np
import pytest

from bench import real_photos, selective_search


def _recall(ar300, small300):
  return {"results": {
      "300": {"recall@0.5": 0.5, "recall@0.7": 0.25, "ar": ar300,
              "by_size": {"small": {"ar": small300}, "medium": {"ar": None},
                          "large": {"ar": 0.9}}},
      "1000": {"recall@0.5": 0.75, "recall@0.7": 0.5, "ar": 0.6}}}


def test_figures_flatten_recall_json():
  f = real_photos.figures(_recall(0.4, 0.1))
  assert f == {"r@300@0.5": 0.5, "r@300@0.7": 0.25, "ar@300": 0.4, "ar_small@300": 0.1,
               "ar_medium@300": None, "ar_large@300": 0.9, "r@1000@0.5": 0.75,
               "r@1000@0.7": 0.5, "ar@1000": 0.6}


def test_summarise_over_seeds():
  runs = [real_photos.figures(_recall(ar, 0.1)) for ar in (0.2, 0.4, 0.6)]
  summary = real_photos.summarise(runs)
  assert summary["ar@300"]["mean"] == pytest.approx(0.4)
  assert summary["ar@300"]["sd"] == pytest.approx(0.2)  # sample sd (n - 1)
  assert (summary["ar@300"]["min"], summary["ar@300"]["max"], summary["ar@300"]["n"]) == (
      0.2, 0.6, 3)
  assert summary["ar_small@300"]["sd"] == pytest.approx(0.0)
  assert "ar_medium@300" not in summary  # no value in any run
  assert real_photos.summarise(runs[:1])["ar@300"]["sd"] == 0.0  # one seed: no spread


def test_training_figures_read_the_last_epoch(tmp_path):
  (tmp_path / "history.csv").write_text(
      "epoch,loss,val_loss,scores_loss,val_scores_loss\n"
      "0,1.5,2.0,0.4,0.7\n1,1.0,1.8,0.3,0.6\n2,0.5,1.9,0.2,0.65\n")
  f = real_photos.training_figures(str(tmp_path))
  assert f == {"loss": 0.5, "val_loss": 1.9, "scores_loss": 0.2, "val_scores_loss": 0.65,
               "best_val_epoch": 1}


def test_tables_and_targets():
  runs = [real_photos.figures(_recall(ar, 0.05)) for ar in (0.2, 0.3)]
  training = [{"loss": 0.5, "val_loss": 1.5, "best_val_epoch": 2}] * 2
  recipe = {"recipe": {"name": "readme"}, "held_out": real_photos.summarise(runs),
            "train": real_photos.summarise(runs), "training": real_photos.summarise(training)}
  result = {"seeds": [0, 1], "recipes": [recipe],
            "selective_search": {"held_out": {**real_photos.figures(_recall(0.2, 0.09)),
                                              "ar@2000": 0.43, "r@2000@0.5": 0.77,
                                              "r@2000@0.7": 0.48},
                                 "seconds_per_image": 1.5}}
  text = real_photos.format_tables(result)
  held_out = text.split("\n\n")[0].splitlines()
  assert held_out[0] == "held-out DET/val: mean±sd over seeds 0,1"
  row = held_out[2].split()
  assert row[0] == "readme" and row[2] == "0.250±0.071"  # ar@300 over the two seeds
  ss = held_out[3]
  assert ss.startswith("selective search") and "0.200" in ss and "±" not in ss
  assert "selective search at 2000 boxes: ar@2000 0.430" in text
  report = real_photos.targets_report(recipe)
  assert any(line.startswith("readme ar@300: 0.250 (target 0.3): MISSED") for line in report)
  assert any("ar_small@300: 0.050 (target 0.1): MISSED" in line for line in report)
  recipe["held_out"]["r@300@0.5"]["mean"] = 0.71
  assert any(line.endswith("r@300@0.5: 0.710 (target 0.7): met")
             for line in real_photos.targets_report(recipe))


def test_recipes_and_skip(tmp_path, capsys):
  assert list(real_photos.RECIPES)[0] == "recommended"  # the README's recipe first
  assert real_photos.parse_args([]).recipes == "recommended"
  for recipe in real_photos.RECIPES.values():  # a reused job comes from a recipe that trains
    assert recipe.reuses is None or real_photos.RECIPES[recipe.reuses].reuses is None
  with pytest.raises(SystemExit):
    real_photos.parse_args(["--recipes", "readme,nope"])
  assert "unknown recipe(s) ['nope']" in capsys.readouterr().err
  # Without the data: one line, exit 0, nothing run.
  missing = str(tmp_path / "absent")
  assert real_photos.main(["--data", missing, "--out", str(tmp_path / "out")]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("make quality (real photos): skipped: no real photos at")
  assert not os.path.exists(tmp_path / "out")


def test_selective_search_boxes_keep_opencvs_order():
  rects = np.array([[10, 20, 5, 6], [0, 0, 100, 50]])
  np.testing.assert_array_equal(selective_search.rects_to_boxes(rects),
                                [[10, 20, 15, 26], [0, 0, 100, 50]])
  assert selective_search.rects_to_boxes(np.zeros((0, 4))).shape == (0, 4)


def test_selective_search_on_an_image():
  if selective_search.available():
    pytest.skip(selective_search.available())
  rgb = np.zeros((120, 160, 3), np.uint8)
  rgb[30:90, 40:120] = (200, 30, 30)  # one red rectangle on black
  boxes = selective_search.propose_image(rgb, max_boxes=50)
  assert 0 < len(boxes) <= 50
  assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
  assert boxes[:, 2].max() <= 160 and boxes[:, 3].max() <= 120
  # The rectangle itself is among them.
  assert any(np.allclose(b, [40, 30, 120, 90], atol=2) for b in boxes), boxes[:10]
  assert math.isfinite(float(boxes.sum()))
  # Its random ranking, seeded per image id: the same order every time.
  selective_search.seed_ranking("a/b")
  first = selective_search.propose_image(rgb, max_boxes=50)
  selective_search.seed_ranking("a/b")
  np.testing.assert_array_equal(selective_search.propose_image(rgb, max_boxes=50), first)


def test_stop_split_is_fixed_and_disjoint():
  ids = [f"img_{i:03d}" for i in range(200)]
  train, stop = real_photos.stop_split(ids, 0.2)
  assert sorted(train + stop) == ids and not set(train) & set(stop)
  assert 25 <= len(stop) <= 55  # about a fifth
  assert real_photos.stop_split(list(reversed(ids)), 0.2) == (train, stop)
  assert real_photos.stop_split(ids, 0.0) == (ids, [])


def test_recipes_that_train_on_other_shards_name_one_that_makes_them():
  for recipe in real_photos.RECIPES.values():
    if recipe.trains_on:
      maker = real_photos.RECIPES[recipe.trains_on]
      assert not (maker.trains_on or maker.reuses or maker.stop_fraction)
      assert recipe.layout == maker.layout and recipe.feature_layer == maker.feature_layer


def test_stop_recipe_preprocesses_two_parts_of_the_training_images(tmp_path):
  images = tmp_path / "data" / "Data" / "DET" / "train"
  images.mkdir(parents=True)
  ids = [f"img_{i:03d}" for i in range(40)]
  for image_id in ids:
    (images / f"{image_id}.JPEG").write_bytes(b"")
  args = real_photos.parse_args(["--data", str(tmp_path / "data")])
  out = str(tmp_path / "out")
  assert real_photos.preprocess_parts(args, real_photos.RECIPES["readme"], out) == [
      ("train", "DET/train", None), ("val", "DET/val", None)]
  parts = real_photos.preprocess_parts(args, real_photos.RECIPES["stop"], out)
  assert [(name, split) for name, split, _ in parts] == [("train", "DET/train"),
                                                         ("stop", "DET/train")]
  listed = [pathlib.Path(path).read_text().split() for _, _, path in parts]
  assert sorted(listed[0] + listed[1]) == ids and listed[1]
  assert (listed[0], listed[1]) == real_photos.stop_split(ids, 0.2)


def test_recommended_recipe_preprocesses_with_rpn_anchors_flags_only(tmp_path, monkeypatch):
  """The README's recipe: rpn-anchors gets no setting flag, and rpn-preprocess
  of both splits exactly its recommended flags (with the weights and seed)."""
  flags = ["--backbone", "VGG16", "--feature_layers", "block4_conv3,block5_conv3",
           "--scales", "3,6.727,22.627", "--ratios", "0.5,1,2", "--flip"]
  calls = []

  def anchors(argv):
    calls.append(("anchors", list(argv)))
    return {"recommended_flags": flags, "suggested": {}}

  def preprocess(argv):
    calls.append(("preprocess", list(argv)))
  monkeypatch.setattr(real_photos.anchors_run, "run", anchors)
  monkeypatch.setattr(real_photos.preprocess, "run", preprocess)
  monkeypatch.setattr(real_photos.trainer_cli, "train_main", lambda argv: calls.append(
      ("train", list(argv))))
  monkeypatch.setattr(real_photos, "propose_and_evaluate", lambda *a: {})
  args = real_photos.parse_args(["--data", "DATA", "--out", str(tmp_path), "--weights", "W"])
  recipe = real_photos.RECIPES["recommended"]
  anchor_flags, _ = real_photos.suggested_anchors(args, recipe, str(tmp_path / "anchors"))
  assert calls[0][1] == ["--input", "DATA", "--split", "DET/train", "--output",
                         str(tmp_path / "anchors"), "--backbone", "VGG16"]
  real_photos.run_seed(args, recipe, anchor_flags, 1)
  runs = [argv for kind, argv in calls if kind == "preprocess"]
  assert len(runs) == 2
  for argv, split in zip(runs, ("DET/train", "DET/val"), strict=True):
    assert argv[:4] == ["--input", "DATA", "--split", split]
    assert argv[6:] == ["--weights", "W", "--seed", "1", "--layout", "tiles", *flags]
  train = next(argv for kind, argv in calls if kind == "train")
  assert "--scales" not in train and "--seed" in train


def test_recipes_of_several_levels_pass_feature_layers():
  levels = real_photos.RECIPES["levels"]
  assert levels.layer_flags == ["--feature_layers", "block4_conv3,block5_conv3"]
  assert real_photos.RECIPES["readme"].layer_flags == ["--feature_layer", "block5_conv3"]


def test_levels_bench_table_and_skip(tmp_path, capsys):
  from bench import levels
  rows = [{"setting": name, "layout": "tiles", "images": 10, "seconds_per_image": seconds,
           "records_per_image": records, "bytes_per_image": 1024.0 * kb}
          for name, seconds, records, kb in (("one level", 1.0, 200.0, 100.0),
                                             ("two levels", 1.5, 250.0, 130.0))]
  text = levels.table(rows).splitlines()
  assert text[2].split()[-2:] == ["1.50", "1.30"]  # x time, x bytes against one level
  assert levels.main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 0
  assert capsys.readouterr().out.startswith("bench.levels: skipped: no --data")
  assert not os.path.exists(tmp_path / "o")
