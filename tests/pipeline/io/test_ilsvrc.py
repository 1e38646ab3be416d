"""Tests of pipeline/io/ilsvrc.py: real ILSVRC samples, layouts, and every bad input.

Boxes are x1, y1, x2, y2 in pixels with x1 = xmin, x2 = xmax + 1 (same for y).
Every bad file is made here, in tmp_path or in memory.
"""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.io import ilsvrc
from pipeline.io import images as images_lib

VID = "VID/train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00078000"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def gradient(width=32, height=24) -> np.ndarray:
  yy, xx = np.mgrid[0:height, 0:width]
  return np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                   np.full_like(xx, 128)], axis=2).astype(np.uint8)


def xml_doc(objects="", size=(100, 80), extra=""):
  size_xml = "" if size is None else (
      f"<size><width>{size[0]}</width><height>{size[1]}</height></size>")
  return (f"<annotation><folder>f</folder><filename>x</filename>{extra}{size_xml}"
          f"{objects}</annotation>").encode()


def obj(name="n02084071", xmin=10, ymin=20, xmax=29, ymax=49,
        order=("xmin", "xmax", "ymin", "ymax")):
  values = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
  fields = "".join(f"<{k}>{values[k]}</{k}>" for k in order if values[k] is not None)
  name_xml = "" if name is None else f"<name>{name}</name>"
  return f"<object>{name_xml}<bndbox>{fields}</bndbox></object>"


# ---------------------------------------------------------------------------
# Errors


def test_input_error_attributes():
  e = images_lib.ImageError("bad pixels")
  assert (e.stage, e.reason, str(e)) == ("decode", "bad pixels", "bad pixels")
  a = ilsvrc.AnnotationError("bad xml")
  assert (a.stage, str(a)) == ("annotation", "bad xml")
  assert isinstance(a, images_lib.InputError) and isinstance(a, ValueError)


def test_pure_parsing_does_not_import_beam(repo_root):
  code = (
      "import sys, io\n"
      "from PIL import Image\n"
      "from pipeline.io import ilsvrc, images as images_lib\n"
      "b = io.BytesIO(); Image.new('RGB', (4, 3)).save(b, 'PNG')\n"
      "images_lib.decode_image(b.getvalue())\n"
      "a = ilsvrc.parse_annotation(b'<annotation><size><width>4</width>"
      "<height>3</height></size></annotation>')\n"
      "ilsvrc.reconcile_size(a, 4, 3); ilsvrc.parse_image_set('a 1')\n"
      "ilsvrc.relative_id('r/a.JPEG', 'r')\n"
      "assert 'apache_beam' not in sys.modules, 'apache_beam imported'\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------
# Real samples


def test_real_vid_xml_field_order_xmax_xmin_ymax_ymin(ilsvrc_samples):
  with open(os.path.join(ilsvrc_samples, "Annotations", VID, "000000.xml"), "rb") as f:
    annotation = ilsvrc.parse_annotation(f.read())
  assert (annotation.width, annotation.height) == (320, 240)
  # object 0: xmin 90, xmax 144, ymin 31, ymax 132 -> [90, 31, 144 + 1, 132 + 1]
  np.testing.assert_array_equal(annotation.boxes, [[90, 31, 145, 133],
                                                   [187, 72, 269, 139],
                                                   [154, 116, 180, 129]])
  assert annotation.boxes.dtype == np.float64
  assert annotation.names == ["n02084071", "n02084071", "n01726692"]
  assert annotation.stats == {}


def test_real_det_val_xml_field_order_xmin_xmax_ymin_ymax(ilsvrc_samples):
  path = os.path.join(ilsvrc_samples, "unpaired", "Annotations", "DET", "val",
                      "ILSVRC2012_val_00037038.xml")
  with open(path, "rb") as f:
    annotation = ilsvrc.parse_annotation(f.read())
  assert (annotation.width, annotation.height) == (500, 375)
  # xmin 77, xmax 394, ymin 82, ymax 290 -> [77, 82, 395, 291]
  np.testing.assert_array_equal(annotation.boxes, [[77, 82, 395, 291]])
  assert annotation.names == ["n02084071"]


def test_real_clsloc_xml_field_order_xmin_ymin_xmax_ymax(ilsvrc_samples):
  path = os.path.join(ilsvrc_samples, "unpaired", "Annotations", "CLS-LOC", "train", "n01440764",
                      "n01440764_10040.xml")
  with open(path, "rb") as f:
    annotation = ilsvrc.parse_annotation(f.read())
  # xmin 64, ymin 103, xmax 369, ymax 277 -> [64, 103, 370, 278]
  np.testing.assert_array_equal(annotation.boxes, [[64, 103, 370, 278]])
  # full-frame box 0 0 438 306 on 439 x 307 -> exactly the image rectangle
  path = os.path.join(ilsvrc_samples, "unpaired", "Annotations", "CLS-LOC", "train", "n01484850",
                      "n01484850_15023.xml")
  with open(path, "rb") as f:
    annotation = ilsvrc.parse_annotation(f.read())
  np.testing.assert_array_equal(annotation.boxes, [[0, 0, 439, 307]])
  boxes, stats = ilsvrc.reconcile_size(annotation, 439, 307)
  np.testing.assert_array_equal(boxes, [[0, 0, 439, 307]])
  assert stats == {}  # touching every border is not clipping


def test_every_real_xml_parses_cleanly_with_boxes_inside(ilsvrc_samples):
  paths = ilsvrc.list_files(ilsvrc_samples, (ilsvrc.ANNOTATION_EXTENSION,))
  assert len(paths) == 17
  for path in paths:
    annotation = ilsvrc.parse_annotation(ilsvrc.read_bytes(path))
    assert annotation.stats == {}, path
    assert len(annotation.boxes) == len(annotation.names) >= 1
    boxes, stats = ilsvrc.reconcile_size(annotation, annotation.width, annotation.height)
    np.testing.assert_array_equal(boxes, annotation.boxes)
    assert stats == {}, path


def test_real_vid_pairs_load(ilsvrc_samples):
  images_dir, annotations_dir = ilsvrc.layout_roots(ilsvrc_samples, split="VID/train")
  images = ilsvrc.list_files(images_dir, ilsvrc.IMAGE_EXTENSIONS)
  annotations = ilsvrc.list_files(annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,))
  assert len(images) == len(annotations) == 8
  image_ids = [ilsvrc.relative_id(p, images_dir) for p in images]
  assert image_ids == [ilsvrc.relative_id(p, annotations_dir) for p in annotations]
  assert image_ids[0] == "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00078000/000000"
  for image_path, annotation_path in zip(images, annotations, strict=True):
    image, boxes, names, stats = ilsvrc.load_example(image_path, annotation_path)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert image.std() > 10  # real pixels, not a blank
    assert boxes.dtype == np.float64 and boxes.shape == (len(names), 4)
    assert stats == {}
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()


def test_real_jpeg_decodes_rgb(ilsvrc_samples):
  with open(os.path.join(ilsvrc_samples, "Data", VID, "000043.JPEG"), "rb") as f:
    data = f.read()
  assert data[:4] == b"\xff\xd8\xff\xe0"
  image = images_lib.decode_image(data)
  assert image.shape == (240, 320, 3) and image.dtype == np.uint8


# ---------------------------------------------------------------------------
# Layouts, listing, image sets


def test_layout_roots():
  assert ilsvrc.layout_roots("gs://b/ILSVRC/") == (
      "gs://b/ILSVRC/Data/DET/train", "gs://b/ILSVRC/Annotations/DET/train")
  assert ilsvrc.layout_roots("/d/ILSVRC", split="CLS-LOC/val/") == (
      "/d/ILSVRC/Data/CLS-LOC/val", "/d/ILSVRC/Annotations/CLS-LOC/val")
  assert ilsvrc.layout_roots(images="/d/ILSVRC2014_DET_train/",
                             annotations="/d/ILSVRC2014_DET_bbox_train") == (
      "/d/ILSVRC2014_DET_train", "/d/ILSVRC2014_DET_bbox_train")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "no input given"),
    ({"input_root": "/r", "images": "/i", "annotations": "/a"}, "not both"),
    ({"images": "/i"}, "go together"),
    ({"annotations": "/a"}, "go together"),
    ({"input_root": "/r", "split": ""}, "--split"),
    ({"input_root": "/r", "split": "DET/../../etc"}, "--split"),
])
def test_layout_roots_refuses(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ilsvrc.layout_roots(**kwargs)


def test_relative_id():
  assert ilsvrc.relative_id(
      "gs://b/Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000663.JPEG",
      "gs://b/Data/DET/train/") == "ILSVRC2014_train_0000/ILSVRC2014_train_00000663"
  assert ilsvrc.relative_id("/r/a/n01440764_10040.xml", "/r/a") == "n01440764_10040"
  assert ilsvrc.relative_id("/r/x.y/z.JPEG", "/r") == "x.y/z"  # only the last extension
  with pytest.raises(ValueError, match="not inside root"):
    ilsvrc.relative_id("/other/a.JPEG", "/r")
  with pytest.raises(ValueError, match="not inside root"):
    ilsvrc.relative_id("/rr/a.JPEG", "/r")  # a prefix of the name is not a parent folder


def test_relative_id_relative_root_against_absolute_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert ilsvrc.relative_id(str(tmp_path / "Data" / "a" / "b.JPEG"), "Data") == "a/b"


def test_list_files_recurses_and_filters(tmp_path):
  for name in ["a.JPEG", "sub/b.jpg", "sub/deeper/c.png", "sub/deeper/d.xml",
               "sub/notes.txt", "e.PNG", "f.JPEG.txt"]:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
  found = ilsvrc.list_files(str(tmp_path) + "/", ilsvrc.IMAGE_EXTENSIONS)
  assert found == sorted(str(tmp_path / n) for n in
                         ["a.JPEG", "sub/b.jpg", "sub/deeper/c.png", "e.PNG"])
  assert ilsvrc.list_files(str(tmp_path), (".xml",)) == [str(tmp_path / "sub/deeper/d.xml")]
  assert ilsvrc.list_files(str(tmp_path / "absent"), (".xml",)) == []
  ids = [ilsvrc.relative_id(p, str(tmp_path)) for p in found]
  assert ids == ["a", "e", "sub/b", "sub/deeper/c"]


def test_parse_image_set_formats():
  # DET val.txt / test.txt: "<id> <index>"
  assert ilsvrc.parse_image_set("ILSVRC2013_val_00000001 1\nILSVRC2013_val_00000002 2\n") == [
      "ILSVRC2013_val_00000001", "ILSVRC2013_val_00000002"]
  # CLS-LOC train_loc.txt, CRLF and blank lines
  assert ilsvrc.parse_image_set(
      "n01440764/n01440764_10040 1\r\n\r\n  \nn01440764/n01440764_107 2\r\n") == [
      "n01440764/n01440764_10040", "n01440764/n01440764_107"]
  # DET train_N.txt: label -1 (verified negative) is still an image
  assert ilsvrc.parse_image_set(
      "ILSVRC2014_train_0000/ILSVRC2014_train_00000663 1\n"
      "ILSVRC2013_train_extra0/ILSVRC2013_train_00000001 -1\n"
      "ILSVRC2013_train/n01440764/n01440764_10026 0") == [
      "ILSVRC2014_train_0000/ILSVRC2014_train_00000663",
      "ILSVRC2013_train_extra0/ILSVRC2013_train_00000001",
      "ILSVRC2013_train/n01440764/n01440764_10026"]
  # extensions, a lone id, a BOM, './'
  assert ilsvrc.parse_image_set("\ufeffa/b.JPEG 1\nc.xml\n./d") == ["a/b", "c", "d"]
  assert ilsvrc.parse_image_set("") == []


def test_read_bytes(tmp_path):
  path = tmp_path / "x.xml.gz"  # the name must not trigger decompression
  path.write_bytes(b"\x00\x01abc")
  assert ilsvrc.read_bytes(str(path)) == b"\x00\x01abc"


# ---------------------------------------------------------------------------
# Annotations


def test_parse_by_tag_name_in_every_order():
  expected = [[10, 20, 30, 50]]  # xmin 10, ymin 20, xmax 29, ymax 49
  for order in [("xmin", "xmax", "ymin", "ymax"),  # DET
                ("xmin", "ymin", "xmax", "ymax"),  # CLS-LOC
                ("xmax", "xmin", "ymax", "ymin")]:  # VID
    annotation = ilsvrc.parse_annotation(xml_doc(obj(order=order)))
    np.testing.assert_array_equal(annotation.boxes, expected)


def test_zero_objects():
  annotation = ilsvrc.parse_annotation(xml_doc())
  assert annotation.boxes.shape == (0, 4) and annotation.boxes.dtype == np.float64
  assert annotation.names == [] and annotation.stats == {}
  boxes, stats = ilsvrc.reconcile_size(annotation, 100, 80)
  assert boxes.shape == (0, 4) and stats == {}


@pytest.mark.parametrize("data, message", [
    (b"", r"empty file \(0 bytes\)"),
    (b"<annotation><object></annotation>", "malformed XML"),
    (b"not xml at all", "malformed XML"),
    (b"<annotation>", "malformed XML"),
    (b"\xff\xfe\x00garbage", "malformed XML"),
    (b"<html><body/></html>", "root element is <html>"),
])
def test_bad_xml_fails_the_annotation(data, message):
  with pytest.raises(ilsvrc.AnnotationError, match=message) as info:
    ilsvrc.parse_annotation(data)
  assert info.value.stage == "annotation"


_OPENED = []  # paths opened while recording (see _record_opens)
_RECORDING = [False]


def _audit(event, args):
  if _RECORDING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
    _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def record_opens():
  _OPENED.clear()
  _RECORDING[0] = True
  yield _OPENED
  _RECORDING[0] = False


@pytest.mark.parametrize("template", [
    # classic XXE: a general entity with a SYSTEM id
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{path}">]>\n'
    '<annotation><object><name>&xxe;</name><bndbox><xmin>1</xmin><xmax>2</xmax>'
    '<ymin>1</ymin><ymax>2</ymax></bndbox></object></annotation>',
    # parameter entity
    '<!DOCTYPE annotation [<!ENTITY % ext SYSTEM "{path}"> %ext;]>\n<annotation/>',
    # external DTD
    '<!DOCTYPE annotation SYSTEM "{path}">\n<annotation/>',
])
def test_xxe_is_refused_and_the_secret_never_read(tmp_path, record_opens, template):
  secret = tmp_path / "secret.txt"
  secret.write_text("TOP-SECRET-7f3a")
  xml_path = tmp_path / "evil.xml"
  xml_path.write_bytes(template.format(path=secret).encode())
  image_path = tmp_path / "evil.JPEG"
  image_path.write_bytes(encode(Image.new("RGB", (8, 8)), "JPEG"))
  record_opens.clear()  # forget the writes above
  with pytest.raises(ilsvrc.AnnotationError, match="refused") as info:
    ilsvrc.parse_annotation(xml_path.read_bytes())
  assert "TOP-SECRET" not in str(info.value)
  with pytest.raises(ilsvrc.AnnotationError, match="refused") as info:
    ilsvrc.load_example(str(image_path), str(xml_path))
  assert info.value.stage == "annotation"
  assert "TOP-SECRET" not in str(info.value)
  assert str(secret) not in record_opens  # never opened, by Python or by C code
  assert str(xml_path) in record_opens  # (the audit hook does see opens)


def test_billion_laughs_is_refused():
  entities = '<!ENTITY lol "lol">' + "".join(
      f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
      for i in range(1, 10))
  data = f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]><annotation>&lol9;</annotation>'
  with pytest.raises(ilsvrc.AnnotationError, match="refused"):
    ilsvrc.parse_annotation(data.encode())


def test_internal_entity_without_external_reference_is_refused():
  data = b'<!DOCTYPE annotation [<!ENTITY a "n02084071">]><annotation/>'
  with pytest.raises(ilsvrc.AnnotationError, match="refused"):
    ilsvrc.parse_annotation(data)


def test_missing_size_uses_the_real_image_size():
  annotation = ilsvrc.parse_annotation(xml_doc(obj(), size=None))
  assert (annotation.width, annotation.height) == (None, None)
  assert annotation.stats == {"size_missing": 1}
  boxes, stats = ilsvrc.reconcile_size(annotation, 100, 80)
  np.testing.assert_array_equal(boxes, [[10, 20, 30, 50]])  # not rescaled
  assert "size_mismatch" not in stats


@pytest.mark.parametrize("size_xml", [
    "<size><width>abc</width><height>80</height></size>",
    "<size><width>100</width></size>",
    "<size><width>0</width><height>80</height></size>",
    "<size><width>-5</width><height>80</height></size>",
])
def test_unusable_size_is_ignored_and_counted(size_xml):
  annotation = ilsvrc.parse_annotation(xml_doc(obj(), size=None, extra=size_xml))
  assert (annotation.width, annotation.height) == (None, None)
  assert annotation.stats == {"size_invalid": 1}
  assert len(annotation.boxes) == 1


def test_unusable_objects_are_dropped_one_by_one():
  objects = "".join([
      obj(name="n00000001"),                            # good
      "<object><name>n00000002</name></object>",         # no bndbox
      obj(name="n00000003", ymax=None),                  # incomplete bndbox
      obj(name="n00000004", xmin="abc"),                 # non-numeric
      obj(name="n00000005", xmax="nan"),                 # not finite
      obj(name="n00000006", xmin=""),                    # empty
      obj(name="n00000007", xmin=1, ymin=2, xmax=3, ymax=4),  # good
  ])
  annotation = ilsvrc.parse_annotation(xml_doc(objects))
  assert annotation.names == ["n00000001", "n00000007"]
  np.testing.assert_array_equal(annotation.boxes, [[10, 20, 30, 50], [1, 2, 4, 5]])
  assert annotation.stats == {"boxes_invalid": 5}


def test_float_coordinates_are_accepted_and_counted():
  annotation = ilsvrc.parse_annotation(xml_doc(
      obj(xmin="10.5", ymin=" 20 ", xmax="29.0", ymax="49") + obj() + obj(xmin="1e1")))
  # xmin 10.5 -> x1 10.5; xmax 29.0 -> x2 30.0
  np.testing.assert_array_equal(annotation.boxes, [[10.5, 20, 30, 50], [10, 20, 30, 50],
                                                   [10, 20, 30, 50]])
  assert annotation.stats == {"boxes_float_coords": 2}


def test_names_that_are_not_wnids_are_kept_and_counted():
  annotation = ilsvrc.parse_annotation(xml_doc(
      obj(name="Scottish_deerhound") + obj(name="n0208407") + obj(name=None) + obj()))
  assert annotation.names == ["Scottish_deerhound", "n0208407", "", "n02084071"]
  assert len(annotation.boxes) == 4
  assert annotation.stats == {"names_not_wnid": 2, "names_missing": 1}


def test_filename_and_folder_are_never_used(tmp_path, record_opens):
  extra = "<folder>../../../etc</folder><filename>%s</filename>"
  data = xml_doc(obj(), extra=extra)
  annotation = ilsvrc.parse_annotation(data)
  assert len(annotation.boxes) == 1
  image_path = tmp_path / "a.JPEG"
  image_path.write_bytes(encode(Image.new("RGB", (100, 80)), "JPEG"))
  xml_path = tmp_path / "a.xml"
  xml_path.write_bytes(data)
  record_opens.clear()
  ilsvrc.load_example(str(image_path), str(xml_path))
  assert {p for p in record_opens if p.startswith(str(tmp_path))} == {
      str(image_path), str(xml_path)}
  assert not [p for p in record_opens if "%s" in p or "../" in p]


# ---------------------------------------------------------------------------
# Box policy


def test_sanitize_boxes_policy_table():
  width, height = 100.0, 80.0
  boxes = np.array([
      [10, 20, 30, 50],      # inside: kept as is
      [0, 0, 100, 80],       # exactly the image: kept, not clipped
      [31, 20, 30, 50],      # xmin 31 > xmax 29 -> x1 31 >= x2 30: min_gt_max
      [30, 20, 30, 50],      # xmin 30 > xmax 29 -> x1 == x2: min_gt_max
      [10, 60, 30, 50],      # y reversed: min_gt_max
      [-10, 70, 40, 95],     # partly outside: clipped to [0, 70, 40, 80]
      [90, -5, 130, 10],     # partly outside: clipped to [90, 0, 100, 10]
      [120, 10, 150, 20],    # wholly right of the image: outside
      [10, -40, 30, -20],    # wholly above: outside
      [-10, 10, 0, 20],      # xmax = -1 -> x2 = 0: touches the left border only: zero_area
      [100, 10, 110, 20],    # xmin = W: touches the right border only: zero_area
      [np.nan, 1, 2, 3],     # not finite: invalid
      [5, 5, 6, 6],          # xmin == xmax: a 1-pixel box, kept
  ])
  kept, stats = ilsvrc.sanitize_boxes(boxes, width, height)
  assert kept.dtype == np.float64
  np.testing.assert_array_equal(kept, [[10, 20, 30, 50], [0, 0, 100, 80], [0, 70, 40, 80],
                                       [90, 0, 100, 10], [5, 5, 6, 6]])
  assert stats == {"boxes_min_gt_max": 3, "boxes_clipped": 2, "boxes_outside": 2,
                   "boxes_zero_area": 2, "boxes_invalid": 1}
  assert set(stats) <= set(ilsvrc.DROPPED_BOX_KEYS) | {"boxes_clipped"}


def test_sanitize_boxes_matches_a_plain_loop():
  rng = np.random.default_rng(0)
  boxes = rng.uniform(-50, 150, (500, 4))
  kept, stats = ilsvrc.sanitize_boxes(boxes, 100, 80)
  expected = []
  for x1, y1, x2, y2 in boxes:
    if x1 >= x2 or y1 >= y2 or x2 <= 0 or y2 <= 0 or x1 >= 100 or y1 >= 80:
      continue
    expected.append([max(x1, 0), max(y1, 0), min(x2, 100), min(y2, 80)])
  np.testing.assert_array_equal(kept, np.array(expected).reshape(-1, 4))
  assert sum(stats.get(k, 0) for k in ilsvrc.DROPPED_BOX_KEYS) == 500 - len(expected)


def test_sanitize_empty():
  kept, stats = ilsvrc.sanitize_boxes(np.zeros((0, 4)), 10, 10)
  assert kept.shape == (0, 4) and stats == {}


def test_xml_min_gt_max_and_outside_boxes_through_reconcile():
  objects = (obj(name="n00000001", xmin=50, xmax=40)          # xmin > xmax: dropped
             + obj(name="n00000002", xmin=90, xmax=119)       # partly outside: clipped
             + obj(name="n00000003", xmin=200, xmax=250)      # wholly outside: dropped
             + obj(name="n00000004", xmin=7, xmax=7))         # 1 px wide: kept
  annotation = ilsvrc.parse_annotation(xml_doc(objects))
  boxes, stats = ilsvrc.reconcile_size(annotation, 100, 80)
  np.testing.assert_array_equal(boxes, [[90, 20, 100, 50], [7, 20, 8, 50]])
  assert stats == {"boxes_min_gt_max": 1, "boxes_clipped": 1, "boxes_outside": 1}


def test_size_disagreeing_with_the_image_rescales_boxes():
  # XML says 640 x 480, the image is 320 x 240: boxes scale by 0.5.
  annotation = ilsvrc.parse_annotation(xml_doc(obj(xmin=100, xmax=199, ymin=40, ymax=239),
                                               size=(640, 480)))
  boxes, stats = ilsvrc.reconcile_size(annotation, 320, 240)
  np.testing.assert_allclose(boxes, [[50, 20, 100, 120]])  # [100, 40, 200, 240] * 0.5
  assert stats == {"size_mismatch": 1}
  # Anisotropic: XML 200 x 100, image 100 x 100 -> x halves, y stays.
  annotation = ilsvrc.parse_annotation(xml_doc(obj(xmin=0, xmax=199, ymin=10, ymax=19),
                                               size=(200, 100)))
  boxes, stats = ilsvrc.reconcile_size(annotation, 100, 100)
  np.testing.assert_allclose(boxes, [[0, 10, 100, 20]])


def test_load_example_keeps_names_aligned_with_boxes(tmp_path):
  objects = (obj(name="n00000001") + obj(name="n00000002", xmin=500, xmax=600)
             + obj(name="n00000003", xmin=1, xmax=2))
  xml_path = tmp_path / "a.xml"
  xml_path.write_bytes(xml_doc(objects, size=(100, 80)))
  image_path = tmp_path / "a.JPEG"
  image_path.write_bytes(encode(Image.fromarray(gradient(100, 80)), "JPEG"))
  image, boxes, names, stats = ilsvrc.load_example(str(image_path), str(xml_path))
  assert image.shape == (80, 100, 3)
  assert names == ["n00000001", "n00000003"]
  np.testing.assert_array_equal(boxes, [[10, 20, 30, 50], [1, 20, 3, 50]])
  assert stats == {"boxes_outside": 1}


def test_load_example_without_annotation_is_a_negative(tmp_path):
  image_path = tmp_path / "neg.JPEG"
  image_path.write_bytes(encode(Image.fromarray(gradient()), "JPEG"))
  image, boxes, names, stats = ilsvrc.load_example(str(image_path), None)
  assert image.shape == (24, 32, 3)
  assert boxes.shape == (0, 4) and boxes.dtype == np.float64 and names == [] and stats == {}


def test_load_example_missing_files(tmp_path):
  image_path = tmp_path / "a.JPEG"
  image_path.write_bytes(encode(Image.fromarray(gradient()), "JPEG"))
  with pytest.raises(images_lib.ImageError, match="cannot read image file") as info:
    ilsvrc.load_example(str(tmp_path / "absent.JPEG"), None)
  assert info.value.stage == "decode"
  with pytest.raises(ilsvrc.AnnotationError, match="cannot read annotation file") as info:
    ilsvrc.load_example(str(image_path), str(tmp_path / "absent.xml"))
  assert info.value.stage == "annotation"
