"""Tests of pipeline/commands/sample_data.py: layout, determinism, boxes that make sense."""
import json
import os

import numpy as np
import pytest

from pipeline.commands import sample_data
from pipeline.io import ilsvrc


def tree_bytes(root):
  """{relative path: content} of every file under root."""
  out = {}
  for dirpath, _, filenames in os.walk(root):
    for filename in filenames:
      path = os.path.join(dirpath, filename)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sample"))
  summary = sample_data.write_sample_dataset(root, 48, 24, 0)
  return root, summary


def load_split(root, split):
  images_dir, annotations_dir = ilsvrc.layout_roots(root, split=f"DET/{split}")
  images = ilsvrc.list_files(images_dir, ilsvrc.IMAGE_EXTENSIONS)
  annotations = ilsvrc.list_files(annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,))
  return images_dir, annotations_dir, images, annotations


def test_layout(dataset):
  root, summary = dataset
  assert summary["train"]["images"] == 48 and summary["val"]["images"] == 24
  assert summary["stale_files"] == []
  assert os.path.isfile(os.path.join(
      root, "Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001.JPEG"))
  assert os.path.isfile(os.path.join(
      root, "Annotations/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001.xml"))
  assert os.path.isfile(os.path.join(root, "Data/DET/val/ILSVRC2013_val_00000024.JPEG"))
  assert os.path.isfile(os.path.join(root, "Annotations/DET/val/ILSVRC2013_val_00000024.xml"))
  for split, count in (("train", 48), ("val", 24)):
    images_dir, annotations_dir, images, annotations = load_split(root, split)
    image_ids = [ilsvrc.relative_id(p, images_dir) for p in images]
    assert len(image_ids) == count
    assert image_ids == [ilsvrc.relative_id(p, annotations_dir) for p in annotations]
    with open(os.path.join(root, "ImageSets", "DET", f"{split}.txt")) as f:
      text = f.read()
    assert ilsvrc.parse_image_set(text) == image_ids
    # "<id> <1-based index>"
    assert [line.split()[1] for line in text.splitlines()] == [str(i) for i in range(1, count + 1)]


def test_xml_schema_and_boxes_are_valid(dataset):
  root, _ = dataset
  sizes, box_sides, counts = set(), [], []
  for split in ("train", "val"):
    _, _, images, annotations = load_split(root, split)
    for image_path, annotation_path in zip(images, annotations, strict=True):
      with open(annotation_path, "rb") as f:
        xml = f.read()
      # DET schema: bndbox children in the DET order xmin, xmax, ymin, ymax
      assert b"<database>ILSVRC_201" in xml and xml.endswith(b"</annotation>\n")
      if b"<bndbox>" in xml:
        box_xml = xml.split(b"<bndbox>")[1]
        assert box_xml.index(b"<xmin>") < box_xml.index(b"<xmax>") < box_xml.index(b"<ymin>")
      annotation = ilsvrc.parse_annotation(xml)
      assert annotation.stats == {}
      assert all(ilsvrc.WNID_PATTERN.fullmatch(n) for n in annotation.names)
      image, boxes, names, stats = ilsvrc.load_example(image_path, annotation_path)
      height, width = image.shape[:2]
      assert (annotation.width, annotation.height) == (width, height)
      assert stats == {}  # nothing clipped, dropped or rescaled
      np.testing.assert_array_equal(boxes, annotation.boxes)
      # inclusive XML coords within 0..W-1 -> continuous boxes within [0, W]
      assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
      assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
      assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
      # boxes are integers (0-based inclusive indices + 1)
      np.testing.assert_array_equal(boxes, np.round(boxes))
      sizes.add((width, height))
      box_sides.extend(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
      counts.append(len(boxes))
      assert image.std() > 5  # textured, not blank
  # sizes vary like ILSVRC: ~200..500 px a side, a few larger, aspect 0.5..2
  assert len(sizes) > 50
  sides = np.array(sorted(sizes), dtype=float)
  assert sides.min() >= 100 and sides.max() <= 800
  aspects = sides[:, 0] / sides[:, 1]
  assert aspects.min() < 0.8 and aspects.max() > 1.25
  assert aspects.min() >= 0.5 and aspects.max() <= 2.0
  # 0..4 objects per image, a few with none
  counts = np.array(counts)
  assert counts.max() <= 4 and 1 <= (counts == 0).sum() <= 0.2 * len(counts)
  # most objects in the anchors' range, some small
  box_sides = np.array(box_sides)
  assert ((box_sides >= 60) & (box_sides <= 400)).mean() > 0.7
  assert (box_sides < 60).sum() >= 1


def test_deterministic_bytes(tmp_path):
  first, second = tmp_path / "a", tmp_path / "b"
  sample_data.write_sample_dataset(str(first), 6, 3, seed=7)
  sample_data.write_sample_dataset(str(second), 6, 3, seed=7)
  a, b = tree_bytes(first), tree_bytes(second)
  assert len(a) == 2 * (6 + 3) + 2
  assert a == b


def test_image_depends_only_on_seed_split_and_index(tmp_path, dataset):
  root, _ = dataset
  small = tmp_path / "small"
  sample_data.write_sample_dataset(str(small), 3, 2, seed=0)
  big = tree_bytes(root)
  for relative, content in tree_bytes(small).items():
    if relative.startswith("ImageSets"):
      continue
    assert big[relative] == content, relative


def test_seed_changes_the_data(tmp_path):
  sample_data.write_sample_dataset(str(tmp_path / "a"), 2, 0, seed=0)
  sample_data.write_sample_dataset(str(tmp_path / "b"), 2, 0, seed=1)
  a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
  assert a.keys() == b.keys()
  assert a != b


def test_stale_files_are_reported_not_deleted(tmp_path):
  sample_data.write_sample_dataset(str(tmp_path), 3, 1, seed=0)
  summary = sample_data.write_sample_dataset(str(tmp_path), 2, 1, seed=0)
  assert summary["stale_files"] == [
      os.path.join("Annotations", "DET", "train", "ILSVRC2014_train_0000",
                   "ILSVRC2014_train_00000003.xml"),
      os.path.join("Data", "DET", "train", "ILSVRC2014_train_0000",
                   "ILSVRC2014_train_00000003.JPEG")]
  assert (tmp_path / "Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000003.JPEG").exists()


def test_main(tmp_path, capsys):
  assert sample_data.main(["--output", str(tmp_path), "--train", "2", "--val", "1",
                           "--seed", "3"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["train"]["images"] == 2 and summary["val"]["images"] == 1
  assert len(ilsvrc.list_files(str(tmp_path), (".JPEG",))) == 3


def test_negative_counts_refused(tmp_path):
  with pytest.raises(ValueError, match="-1"):
    sample_data.write_sample_dataset(str(tmp_path), -1, 2, 0)
