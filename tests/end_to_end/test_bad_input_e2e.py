"""Bad input through the whole pipeline: each input is used or listed in
errors.jsonl with its stage and reason; the run goes on; nothing is lost."""
import io
import os

import numpy as np
from PIL import Image

from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers

SPLIT = "DET/train"


def _jpeg(image, **kwargs):
  out = io.BytesIO()
  image.save(out, format=kwargs.pop("format", "JPEG"), **kwargs)
  return out.getvalue()


def write_bad_and_odd_inputs(root: str) -> dict:
  """Writes one image + XML pair per case under root/Data|Annotations/SPLIT;
  returns {image_id: (image bytes, xml, expected outcome: ok, skipped or the stage)}."""
  rng = np.random.default_rng(0)
  good = fixtures.random_image(rng, 320, 240, [(50, 40, 200, 180)])

  def good_xml(image_id):
    return fixtures.det_xml(image_id, 320, 240, [(50, 40, 199, 179)])
  png = _jpeg(Image.fromarray(good), format="PNG")
  cases = {
      # image_id: (image bytes, xml, expected outcome or stage)
      "ok_plain": (_jpeg(Image.fromarray(good)), good_xml("ok_plain"), "ok"),
      "ok_png_named_jpeg": (png, good_xml("ok_png_named_jpeg"), "ok"),
      "ok_cmyk": (_jpeg(Image.fromarray(good).convert("CMYK")), good_xml("ok_cmyk"), "ok"),
      "ok_gray": (_jpeg(Image.fromarray(good).convert("L")), good_xml("ok_gray"), "ok"),
      "ok_palette": (_jpeg(Image.fromarray(good).convert("P"), format="PNG"),
                     good_xml("ok_palette"), "ok"),
      # Padded to the tiny net's least, 32 x 32; no anchor fits in it: skipped.
      "tiny": (_jpeg(Image.fromarray(good[:20, :25])), fixtures.det_xml("t", 25, 20, []),
               "skipped"),
      "ok_elongated": (_jpeg(Image.fromarray(rng.integers(0, 255, (160, 1000, 3), np.uint8))),
                       fixtures.det_xml("e", 1000, 160, [(10, 10, 300, 140)]), "ok"),
      # 1000 x 80: every anchor (3 strides and more, stride 40 px high) is
      # taller than the image, so no anchor is inside: skipped with the reason.
      "flat": (_jpeg(Image.fromarray(rng.integers(0, 255, (80, 1000, 3), np.uint8))),
               fixtures.det_xml("f", 1000, 80, [(10, 10, 300, 70)]), "skipped"),
      "ok_rgba": (_jpeg(Image.fromarray(good).convert("RGBA"), format="PNG"),
                  good_xml("ok_rgba"), "ok"),
      "ok_16bit": (_jpeg(Image.fromarray((good[..., 0].astype(np.uint16) * 257)), format="PNG"),
                   good_xml("ok_16bit"), "ok"),
      # Annotation oddities that are used, each counted in the manifest.
      "ok_size_mismatch": (_jpeg(Image.fromarray(good)), fixtures.det_xml(
          "m", 640, 480, [(100, 80, 399, 359)]), "ok"),
      "ok_size_missing": (_jpeg(Image.fromarray(good)), "".join(
          line for line in good_xml("s").splitlines(keepends=True) if "<size>" not in line), "ok"),
      "ok_not_wnid": (_jpeg(Image.fromarray(good)), fixtures.det_xml(
          "w", 320, 240, [(50, 40, 199, 179)], name="Scottish_deerhound"), "ok"),
      "ok_float_coords": (_jpeg(Image.fromarray(good)), fixtures.det_xml(
          "c", 320, 240, [(50.5, 40, 199.25, 179)]), "ok"),
      "ok_boxes_outside": (_jpeg(Image.fromarray(good)), fixtures.det_xml(
          "o", 320, 240, [(-20, 10, 100, 100), (400, 10, 500, 100), (120, 90, 60, 150),
                          (50, 40, 199, 179)]), "ok"),
      "bad_empty": (b"", good_xml("bad_empty"), "decode"),
      "bad_truncated": (_jpeg(Image.fromarray(good))[:600], good_xml("bad_truncated"), "decode"),
      "bad_random_bytes": (rng.bytes(5000), good_xml("bad_random_bytes"), "decode"),
      "bad_xml": (_jpeg(Image.fromarray(good)), "<annotation><size>", "annotation"),
      "bad_xxe": (_jpeg(Image.fromarray(good)),
                  '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                  "<annotation><filename>&x;</filename></annotation>", "annotation"),
  }
  for image_id, (data, xml, _) in cases.items():
    fixtures.write_pair(root, SPLIT, image_id, None, xml, image_bytes=data)
  # A bomb: a PNG declaring 7000 x 7000 pixels (> 40 M) in a few bytes.
  bomb = fixtures.png_header_only(7000, 7000)
  fixtures.write_pair(root, SPLIT, "bad_bomb", None, good_xml("bad_bomb"), image_bytes=bomb)
  cases["bad_bomb"] = (bomb, None, "decode")
  return cases


def check_counters_agree(found, counts, records):
  """The Beam counters of a run (what its table prints and a runner's UI shows)
  agree with the manifest's counts and the records; each is documented."""
  from pipeline.beam import metrics
  for key in ("images_found", "images_ok", "images_failed", "images_skipped", "records",
              "images_padded", "images_no_anchors", "boxes_clipped", "size_mismatch"):
    assert found.get(key, 0) == counts.get(key, 0), key
  stages = {key for key in counts if key.startswith("failed_")}
  assert stages == {key for key in found if key.startswith("failed_") and found[key]}
  for key in stages:
    assert found[key] == counts[key], key
  assert sum(v for k, v in found.items() if k.startswith("skipped_")) == counts["images_skipped"]
  assert found.get("skipped_targets", 0) == counts.get("images_no_anchors", 0)
  assert found["record_bytes"] == sum(len(r) for r in records)
  buckets = sum(v for k, v in found.items() if k.startswith(metrics.BUCKET_PREFIX))
  assert buckets == found["backbone_ms"]["count"] == found["images_featurized"]
  assert not [name for name in found if metrics.counter_doc(name) is None]
  table = metrics.format_table(found)
  assert "images_failed" in table and "p50 ~" in table


def test_bad_and_odd_inputs_end_to_end(tmp_path):
  root = str(tmp_path / "data")
  cases = write_bad_and_odd_inputs(root)
  output = str(tmp_path / "out")
  result = helpers.preprocess_result(root, output)
  manifest = result.manifest
  helpers.check_accounting(output, manifest, os.path.join(root, "Data", SPLIT))
  check_counters_agree(result.metrics, manifest.counts, helpers.read_records(output))
  helpers.check_records_follow_conventions(output)
  images = {line["image_id"]: line
            for line in helpers.read_jsonl(os.path.join(output, "images.jsonl"))}
  errors = {e["image_id"]: e for e in helpers.read_jsonl(os.path.join(output, "errors.jsonl"))}
  for image_id, (_, _, expected) in cases.items():
    if expected == "ok":
      assert image_id in images, (image_id, errors.get(image_id))
    elif expected == "skipped":
      assert image_id not in images
      assert errors[image_id]["outcome"] == "skipped" and errors[image_id]["stage"] == "targets"
    else:
      assert errors[image_id]["stage"] == expected, errors[image_id]
      assert errors[image_id]["outcome"] == "failed" and errors[image_id]["reason"]
  assert "7000x7000" in errors["bad_bomb"]["reason"]
  # Refused by the limit, not by a failed decode.
  assert "max_pixels" in errors["bad_bomb"]["reason"]
  with open(os.path.join(output, "errors.jsonl")) as f:
    assert "root:" not in f.read()  # /etc/passwd unread
  counts = manifest.counts
  assert counts["images_failed"] == sum(1 for c in cases.values() if c[2] not in ("ok", "skipped"))
  assert counts["images_skipped"] == counts["images_no_anchors"] == 2
  assert images["ok_elongated"]["num_locations"] > 0 and images["ok_elongated"]["num_fg"] > 0
  assert counts["images_padded"] == 1  # tiny: 25 x 20 padded to 32 x 32 (the tiny net's least)
  assert "inside the 32x32 frame" in errors["tiny"]["reason"]
  assert "inside the 1000x80 frame" in errors["flat"]["reason"]
  # ok_boxes_outside: one clipped, one wholly outside, one with xmin > xmax.
  assert images["ok_boxes_outside"]["gt_boxes"] == [[0.0, 10.0, 101.0, 101.0],
                                                    [50.0, 40.0, 200.0, 180.0]]
  assert counts["boxes_clipped"] == 1 and counts["boxes_dropped"] == 2
  # Each used oddity is counted once in the manifest.
  assert counts["size_mismatch"] == 1 and counts["size_missing"] == 1
  assert counts["names_not_wnid"] == 1 and counts["boxes_float_coords"] == 1
  # <size> 640 x 480 on a 320 x 240 image: the box scaled by 1/2 into the real frame.
  assert images["ok_size_mismatch"]["gt_boxes"] == [[50.0, 40.0, 200.0, 180.0]]
  assert (images["ok_size_missing"]["width"], images["ok_size_missing"]["height"]) == (320, 240)
  elongated = images["ok_elongated"]
  assert (elongated["width"], elongated["height"]) == (1000, 160)
  assert elongated["feature_width"] >= 6 * elongated["feature_height"]  # 1000 / 160 = 6.25
  assert elongated["gt_boxes"] == [[10.0, 10.0, 301.0, 141.0]]
