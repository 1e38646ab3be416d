"""Tests of pipeline/io/images.py: every kind of image file, and every bad one.

Every bad file is made here, in tmp_path or in memory.
"""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.io import ilsvrc
from pipeline.io import images as images_lib
from tests.dataset_fixtures import png_header_only
from tests.pipeline.io.test_ilsvrc import encode, gradient


def test_empty_file(tmp_path):
  path = tmp_path / "empty.JPEG"
  path.write_bytes(b"")
  with pytest.raises(images_lib.ImageError, match=r"^empty file \(0 bytes\)$") as info:
    ilsvrc.load_example(str(path), None)
  assert info.value.stage == "decode"


def test_truncated_jpeg():
  data = encode(Image.fromarray(gradient(200, 150)), "JPEG", quality=95)
  with pytest.raises(images_lib.ImageError, match="truncated"):
    images_lib.decode_image(data[:len(data) // 2])


def test_random_bytes_named_jpeg(tmp_path):
  path = tmp_path / "noise.JPEG"
  path.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(images_lib.ImageError, match="not an image: .*1000 bytes") as info:
    ilsvrc.load_example(str(path), None)
  assert "0x" not in str(info.value)  # no object address in the reason


def test_corrupt_png_data():
  data = bytearray(encode(Image.fromarray(gradient(64, 64)), "PNG"))
  start = data.index(b"IDAT") + 8
  data[start:start + 20] = b"\x00" * 20
  with pytest.raises(images_lib.ImageError, match="cannot decode PNG 64x64"):
    images_lib.decode_image(bytes(data))


def test_png_named_jpeg(tmp_path):
  pixels = gradient()
  path = tmp_path / "n02105855_2933.JPEG"
  path.write_bytes(encode(Image.fromarray(pixels), "PNG"))
  image, _, _, _ = ilsvrc.load_example(str(path), None)
  np.testing.assert_array_equal(image, pixels)  # lossless


def test_cmyk_jpeg():
  cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
  image = images_lib.decode_image(encode(cmyk, "JPEG", quality=100))
  assert image.shape == (8, 16, 3)
  assert image[..., 0].mean() > 230 and image[..., 1:].mean() < 25


def test_grayscale_jpeg():
  gray = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1)), "L")
  image = images_lib.decode_image(encode(gray, "JPEG", quality=100))
  assert image.shape == (12, 25, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 1])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_one_bit_png():
  bits = Image.fromarray(np.eye(6, dtype=bool))
  assert bits.mode == "1"
  image = images_lib.decode_image(encode(bits, "PNG"))
  np.testing.assert_array_equal(image[..., 0], np.eye(6, dtype=np.uint8) * 255)


def test_palette_png_with_and_without_transparency():
  palette_image = Image.fromarray(gradient()).convert("P", palette=Image.ADAPTIVE, colors=16)
  image = images_lib.decode_image(encode(palette_image, "PNG"))
  np.testing.assert_array_equal(image, np.asarray(palette_image.convert("RGB")))
  indices = np.zeros((4, 4), np.uint8)
  indices[0, 0] = 1
  transparent = Image.fromarray(indices, "P")
  transparent.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
  image = images_lib.decode_image(encode(transparent, "PNG", transparency=0))
  np.testing.assert_array_equal(image[0, 0], [255, 0, 0])  # opaque red
  np.testing.assert_array_equal(image[1, 1], [255, 255, 255])  # transparent -> white


def test_rgba_and_la_composite_over_white():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 2] = 200
  rgba[0, 0, 3] = 255  # opaque blue
  rgba[0, 1, 3] = 128  # half transparent
  image = images_lib.decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
  assert image.shape == (4, 4, 3)
  np.testing.assert_array_equal(image[0, 0], [0, 0, 200])
  np.testing.assert_array_equal(image[3, 3], [255, 255, 255])
  assert 120 <= image[0, 1, 0] <= 135  # 255 * (1 - 128/255)
  la = Image.fromarray(np.dstack([np.full((3, 3), 50, np.uint8),
                                  np.full((3, 3), 255, np.uint8)]), "LA")
  np.testing.assert_array_equal(images_lib.decode_image(encode(la, "PNG")), np.full((3, 3, 3), 50))


def test_sixteen_bit_png_scales_to_eight_bit():
  values = np.array([[0, 0x8000, 0xFFFF, 0x00FF]], np.uint16)
  image16 = Image.fromarray(values)
  data = encode(image16, "PNG")
  assert Image.open(io.BytesIO(data)).mode.startswith("I")
  image = images_lib.decode_image(data)
  # 0 -> 0, 32768 -> 128, 65535 -> 255, 255 -> 1 (a dark 16-bit pixel stays dark)
  np.testing.assert_array_equal(image[0, :, 0], [0, 128, 255, 1])


def test_float_and_int32_images():
  floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
  np.testing.assert_array_equal(images_lib.decode_image(encode(floats, "TIFF"))[0, :, 0],
                                [0, 128, 255])
  # Beyond 0..65535: stretched min..max (0 -> 127.5, rounds either way).
  ints = Image.fromarray(np.array([[-100, 0, 100]], np.int32), "I")
  np.testing.assert_allclose(images_lib.decode_image(encode(ints, "TIFF"))[0, :, 0],
                             [0, 127.5, 255], atol=0.5)
  # Within 0..255: taken as 8-bit values.
  ints = Image.fromarray(np.array([[0, 7, 255]], np.int32), "I")
  np.testing.assert_array_equal(images_lib.decode_image(encode(ints, "TIFF"))[0, :, 0], [0, 7, 255])


def test_exif_rotation_is_not_applied():
  pixels = gradient(40, 20)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees on display
  data = encode(Image.fromarray(pixels), "JPEG", quality=100, exif=exif.tobytes())
  assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
  image = images_lib.decode_image(data)
  assert image.shape == (20, 40, 3)  # the stored frame, as the boxes are
  assert np.abs(image.astype(int) - pixels).mean() < 3


def test_decompression_bomb_refused_before_decoding():
  # Declares 8000 x 6000 = 48 M pixels > 40 M: refused from the header alone.
  with pytest.raises(images_lib.ImageError,
                     match="8000x6000 = 48000000 pixels > max_pixels 40000000"):
    images_lib.decode_image(png_header_only(8000, 6000))
  # Far beyond Pillow's own limit: Pillow refuses in Image.open, also with the size.
  with pytest.raises(images_lib.ImageError, match="decompression bomb.*10000000000 pixels"):
    images_lib.decode_image(png_header_only(100000, 100000))
  # A small real image over a small limit.
  with pytest.raises(images_lib.ImageError, match="32x24 = 768 pixels > max_pixels 500"):
    images_lib.decode_image(encode(Image.fromarray(gradient()), "PNG"), max_pixels=500)


def test_zero_sized_image_is_refused():
  with pytest.raises(images_lib.ImageError):
    images_lib.decode_image(png_header_only(0, 10))


@pytest.mark.parametrize("width, height", [(1, 1), (1, 300), (2000, 3), (5, 7)])
def test_tiny_and_elongated_images(width, height):
  pixels = gradient(width, height)
  image = images_lib.decode_image(encode(Image.fromarray(pixels), "PNG"))
  assert image.shape == (height, width, 3)
  np.testing.assert_array_equal(image, pixels)
  jpeg = images_lib.decode_image(encode(Image.fromarray(pixels), "JPEG"))
  assert jpeg.shape == (height, width, 3)


def test_image_size_reads_the_header_only(tmp_path):
  import io

  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(buffer, format="JPEG")
  data = buffer.getvalue()
  whole, cut = tmp_path / "whole.JPEG", tmp_path / "cut.JPEG"
  whole.write_bytes(data)
  cut.write_bytes(data[:len(data) - 50])  # header intact, pixels cut short
  assert images_lib.image_size(str(whole)) == (320, 240)
  assert images_lib.image_size(str(cut)) == (320, 240)  # only decoding finds this damage
  with pytest.raises(images_lib.ImageError, match="cannot decode"):
    images_lib.decode_image(cut.read_bytes())
  (tmp_path / "empty.JPEG").write_bytes(b"")
  with pytest.raises(images_lib.ImageError, match="empty file"):
    images_lib.image_size(str(tmp_path / "empty.JPEG"))
  with pytest.raises(images_lib.ImageError, match="max_pixels"):
    images_lib.image_size(str(whole), max_pixels=1000)
