"""pipeline.core.frame: the frame fed to the backbone (resize, then padding)."""
import numpy as np

from pipeline.core import frame as frame_lib


def test_prepare_image_pads_small_images_bottom_right():
  image = np.full((50, 300, 3), 7, np.uint8)
  boxes = np.array([[10.0, 5.0, 60.0, 40.0]])
  out, out_boxes, scale = frame_lib.prepare_image(image, boxes, min_input_side=75)
  assert out.shape == (75, 300, 3) and scale == 1.0
  assert (out[:50] == 7).all() and (out[50:] == 0).all()
  np.testing.assert_array_equal(out_boxes, boxes)  # padding never moves boxes


def test_prepare_image_resize_min_and_max_side():
  image = np.zeros((100, 400, 3), np.uint8)
  boxes = np.array([[0.0, 0.0, 400.0, 100.0]])
  out, out_boxes, scale = frame_lib.prepare_image(image, boxes, 32, min_side=200, max_side=600)
  # min_side asks for x2 (800 wide), max_side caps the long side: 600 / 400 = 1.5.
  assert scale == 1.5 and out.shape == (150, 600, 3)
  np.testing.assert_allclose(out_boxes, [[0, 0, 600, 150]])
  same, _, one = frame_lib.prepare_image(image, boxes, 32)
  assert one == 1.0 and same is image  # resizing is off by default


def test_prepare_frame_gives_the_scale_back_to_image_pixels():
  image = np.zeros((100, 400, 3), np.uint8)
  boxes = np.array([[40.0, 10.0, 80.0, 50.0]])
  frame, frame_boxes, (sx, sy) = frame_lib.prepare_frame(image, boxes, 32, min_side=150,
                                                         max_side=900)
  assert frame.shape == (150, 600, 3) and (sx, sy) == (1.5, 1.5)
  np.testing.assert_allclose(frame_boxes, [[60, 15, 120, 75]])
  np.testing.assert_allclose(frame_boxes / [sx, sy, sx, sy], boxes)  # back to the image
  # A small image is padded, not scaled: the scale stays 1 and no box moves.
  small, small_boxes, scale = frame_lib.prepare_frame(np.zeros((20, 40, 3), np.uint8),
                                                       np.zeros((0, 4)), 32)
  assert small.shape == (32, 40, 3) and scale == (1.0, 1.0) and small_boxes.shape == (0, 4)


def test_frame_size_is_prepare_image_without_pixels():
  for (height, width), sides in [((50, 300), (None, None)), ((333, 500), (600, 1000)),
                                 ((100, 400), (200, 600)), ((17, 9), (None, None))]:
    frame = frame_lib.frame_size(width, height, 32, *sides)
    out, _, scale = frame_lib.prepare_image(np.zeros((height, width, 3), np.uint8),
                                            np.zeros((0, 4)), 32, *sides)
    assert (frame.height, frame.width) == out.shape[:2] and frame.scale == scale


def test_mirror_flips_the_image_and_its_boxes():
  image = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
  boxes = np.array([[0, 0, 2, 1], [1.5, 0.5, 5, 2]])
  mirrored, flipped = frame_lib.mirror(image, boxes)
  np.testing.assert_array_equal(mirrored, image[:, ::-1])
  assert mirrored.flags["C_CONTIGUOUS"]
  np.testing.assert_allclose(flipped, [[3, 0, 5, 1], [0, 0.5, 3.5, 2]])
  # Pixel columns 0-1 (box 0 covers x in [0, 2)) are columns 3-4 of the mirror.
  np.testing.assert_array_equal(mirrored[:, 3:5], image[:, 0:2][:, ::-1])
  again, back = frame_lib.mirror(mirrored, flipped)
  np.testing.assert_array_equal(again, image)
  np.testing.assert_allclose(back, boxes)
  assert frame_lib.mirror(image, np.zeros((0, 4)))[1].shape == (0, 4)
