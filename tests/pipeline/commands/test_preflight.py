"""pipeline.commands.preflight: the checks of the launching machine, local and through
the remote code path (Beam's FileSystems with a listing limit)."""
import os

import pytest

from pipeline.commands import preflight
from pipeline.commands.cli import UsageError
from pipeline.io import storage
from tests import dataset_fixtures as fixtures


@pytest.fixture
def root(tmp_path):
  data = str(tmp_path / "data")
  fixtures.write_dataset(data, "DET/train", num_images=2)
  os.makedirs(os.path.join(data, "Data", "CLS-LOC", "val"))
  return data


@pytest.fixture
def remote(monkeypatch):
  """Local paths through the code path of gs:// (globs with a limit)."""
  monkeypatch.setattr(storage, "is_local", lambda path: False)


def test_splits_are_listed(root):
  assert preflight.splits_under(os.path.join(root, "Data")) == ["CLS-LOC/val", "DET/train"]
  with pytest.raises(UsageError, match="no such split .*; found CLS-LOC/val, DET/train$"):
    preflight.check_split(root, "DET/val")


def test_splits_through_the_remote_path(root, remote):
  # Only folders with files show on an object store: CLS-LOC/val is empty.
  assert preflight.splits_under(os.path.join(root, "Data")) == ["DET/train"]
  assert preflight.is_dir(os.path.join(root, "Data", "DET"))
  assert not preflight.is_dir(os.path.join(root, "Data", "DET", "val"))


def test_images_found_within_the_listing_limit(root, remote, monkeypatch, tmp_path):
  preflight.check_images(os.path.join(root, "Data", "DET", "train"), "--split", "DET/train")
  notes = tmp_path / "notes"
  notes.mkdir()
  for i in range(5):
    (notes / f"{i}.txt").write_text("x")
  with pytest.raises(UsageError, match="no image files"):
    preflight.check_images(str(notes), "--split", "notes")
  # As many objects as the limit and no image among them: the workers' listing decides.
  monkeypatch.setattr(preflight, "LISTING_LIMIT", 5)
  preflight.check_images(str(notes), "--split", "notes")


def test_image_set(tmp_path):
  good = tmp_path / "train.txt"
  good.write_text("n01/a 1\nn01/b 2\n")
  preflight.check_image_set(str(good))
  (tmp_path / "blank.txt").write_text("\n\n")
  with pytest.raises(UsageError, match="lists no image id"):
    preflight.check_image_set(str(tmp_path / "blank.txt"))
  (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 100)
  with pytest.raises(UsageError, match="not a text file"):
    preflight.check_image_set(str(tmp_path / "binary.txt"))
  with pytest.raises(UsageError, match="no such file"):
    preflight.check_image_set(str(tmp_path / "none.txt"))


def test_output_check_writes_nothing(tmp_path):
  target = tmp_path / "a" / "b" / "out"
  preflight.check_output(str(target))
  assert os.listdir(tmp_path) == []  # the probe went to tmp_path and is gone
  (tmp_path / "f").write_text("x")
  with pytest.raises(UsageError, match="is a file, not a directory"):
    preflight.check_output(str(tmp_path / "f"))
  with pytest.raises(UsageError, match="f is a file"):
    preflight.check_output(str(tmp_path / "f" / "out"))


def test_an_unknown_store_is_named():
  with pytest.raises(UsageError, match="--output nosuch://bucket/out: cannot write there "
                     r"\(Unable to get filesystem"):
    preflight.check_output("nosuch://bucket/out")
  with pytest.raises(UsageError, match="nosuch://bucket/data: Unable to get filesystem"):
    preflight.check_root("nosuch://bucket/data")
