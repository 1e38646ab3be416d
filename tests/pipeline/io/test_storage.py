"""pipeline.io.storage on local paths (gs:// only through makedirs / is_local)."""
import json
import os

from pipeline.io import storage


def test_text_round_trip(tmp_path):
  path = str(tmp_path / "a.txt")
  storage.write_text(path, "héllo\nworld")
  assert storage.read_text(path) == "héllo\nworld"
  with open(path, "rb") as f:
    assert f.read() == "héllo\nworld".encode("utf-8")


def test_bytes_round_trip(tmp_path):
  path = str(tmp_path / "a.bin")
  data = bytes(range(256)) * 3
  storage.write_bytes(path, data)
  assert storage.read_bytes(path) == data


def test_json_round_trip_sorted_keys_and_final_newline(tmp_path):
  path = str(tmp_path / "m.json")
  value = {"zeta": 1, "alpha": [1, 2.5, None], "mid": {"b": True, "a": "x"}}
  storage.write_json(path, value)
  assert storage.read_json(path) == value
  with open(path) as f:
    text = f.read()
  assert text.endswith("}\n") and not text.endswith("\n\n")
  assert text == json.dumps(value, indent=2, sort_keys=True) + "\n"
  assert text.index('"alpha"') < text.index('"mid"') < text.index('"zeta"')
  assert text.index('"a"') < text.index('"b"')


def test_read_jsonl_skips_blank_lines(tmp_path):
  path = str(tmp_path / "lines.jsonl")
  with open(path, "w") as f:
    f.write('{"a": 1}\n\n   \n{"b": 2}\n[3]\n\t\n')
  assert storage.read_jsonl(path) == [{"a": 1}, {"b": 2}, [3]]


def test_read_jsonl_of_empty_file(tmp_path):
  path = str(tmp_path / "empty.jsonl")
  open(path, "w").close()
  assert storage.read_jsonl(path) == []


def test_write_bytes_creates_parents_and_leaves_no_temp_file(tmp_path):
  path = str(tmp_path / "x" / "y" / "z" / "out.bin")
  assert not os.path.exists(tmp_path / "x")
  storage.write_bytes(path, b"payload")
  with open(path, "rb") as f:
    assert f.read() == b"payload"
  assert os.listdir(tmp_path / "x" / "y" / "z") == ["out.bin"]
  assert not os.path.exists(path + ".tmp")


def test_write_overwrites_existing_file(tmp_path):
  path = str(tmp_path / "over.json")
  storage.write_json(path, {"long": "x" * 1000})
  storage.write_json(path, {"short": 1})
  assert storage.read_json(path) == {"short": 1}
  with open(path) as f:
    assert f.read() == '{\n  "short": 1\n}\n'  # nothing left of the longer content
  storage.write_text(path, "")
  assert storage.read_text(path) == ""
  assert sorted(os.listdir(tmp_path)) == ["over.json"]


def test_exists(tmp_path):
  path = str(tmp_path / "f.txt")
  assert not storage.exists(path)
  storage.write_text(path, "1")
  assert storage.exists(path)
  assert not storage.exists(str(tmp_path / "other.txt"))


def test_join():
  assert storage.join("/a/b", "c") == "/a/b/c"
  assert storage.join("/a/b", "c", "d.json") == "/a/b/c/d.json"
  assert storage.join("/a/b/", "c") == "/a/b/c"
  # (gs:// joins need the optional apache-beam[gcp] extra: not tested here.)


def test_glob_sorted_and_empty_on_no_match(tmp_path):
  for name in ("tiles-00002", "tiles-00000", "tiles-00001", "images.jsonl"):
    storage.write_text(str(tmp_path / name), name)
  matches = storage.glob(storage.join(str(tmp_path), "tiles-*"))
  assert matches == [str(tmp_path / f"tiles-0000{i}") for i in range(3)]
  assert storage.glob(storage.join(str(tmp_path), "nothing-*")) == []
  assert storage.glob(str(tmp_path / "missing_dir" / "*")) == []


def test_makedirs_local(tmp_path):
  directory = str(tmp_path / "p" / "q")
  storage.makedirs(directory)
  assert os.path.isdir(directory)
  storage.makedirs(directory)  # exists already: no error
  assert os.path.isdir(directory)


def test_makedirs_is_a_no_op_for_object_stores(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.is_local("/a/b") and storage.is_local("relative/dir")
  assert not storage.is_local("gs://bucket/dir")
  storage.makedirs("gs://bucket/some/dir")  # no exception, no GCS call
  assert os.listdir(tmp_path) == []  # nothing created locally (e.g. ./gs:)
