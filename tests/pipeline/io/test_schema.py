"""pipeline.io.schema: Example round trip, eagerly and inside Dataset.map."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.io import schema


def _record(dtype, seed=0, channels=5):
  rng = np.random.default_rng(seed)
  tile = rng.normal(size=(3, 3, channels)).astype(dtype)
  labels = rng.integers(-1, 2, 9)
  deltas = rng.normal(size=36).astype(np.float32)
  return tile, labels, deltas


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_eager_and_in_dataset_map(dtype):
  records = [_record(dtype, seed) for seed in range(3)]
  serialized = [schema.make_example(tile, labels, deltas, f"a/img_{i}", (i, 2 * i))
                for i, (tile, labels, deltas) in enumerate(records)]
  eager = schema.parse_examples(tf.constant(serialized), 9, 5, dtype)
  mapped = next(iter(tf.data.Dataset.from_tensor_slices(serialized).batch(3).map(
      lambda s: schema.parse_examples(s, 9, 5, dtype))))
  for parsed in (eager, mapped):
    for i, (tile, labels, deltas) in enumerate(records):
      np.testing.assert_array_equal(parsed["tile"][i].numpy(), tile.astype(np.float32))
      np.testing.assert_array_equal(parsed["labels"][i].numpy(), labels)
      np.testing.assert_array_equal(parsed["deltas"][i].numpy(), deltas)
      assert parsed["image_id"][i].numpy().decode() == f"a/img_{i}"
      np.testing.assert_array_equal(parsed["location"][i].numpy(), [i, 2 * i])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tiles_of_levels_of_different_channels_are_padded_when_read(dtype):
  """level_channels [2, 5, 3]: each record holds its level's channels; read
  back, every tile has 5, its own first and zeros after, eagerly and in
  Dataset.map; a tile of another level's size stops the read."""
  level_channels = [2, 5, 3]
  records = [(level, _record(dtype, seed, level_channels[level]))
             for seed, level in enumerate([1, 0, 2, 0, 1])]
  serialized = [schema.make_example(tile, labels, deltas, f"img_{i}", (i, i), level=level)
                for i, (level, (tile, labels, deltas)) in enumerate(records)]
  eager = schema.parse_examples(tf.constant(serialized), 9, 5, dtype, level_channels)
  mapped = next(iter(tf.data.Dataset.from_tensor_slices(serialized).batch(5).map(
      lambda s: schema.parse_examples(s, 9, 5, dtype, level_channels))))
  for parsed in (eager, mapped):
    assert parsed["tile"].shape == (5, 3, 3, 5)
    for i, (level, (tile, labels, deltas)) in enumerate(records):
      count = level_channels[level]
      got = parsed["tile"][i].numpy()
      np.testing.assert_array_equal(got[..., :count], tile.astype(np.float32))
      assert not got[..., count:].any()
      assert int(parsed["level"][i]) == level
      np.testing.assert_array_equal(parsed["labels"][i].numpy(), labels)
      np.testing.assert_array_equal(parsed["deltas"][i].numpy(), deltas)
  wrong = schema.make_example(_record(dtype, 9, 5)[0], *_record(dtype)[1:], "w", (0, 0),
                              level=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="level's channels"):
    schema.parse_examples(tf.constant([wrong]), 9, 5, dtype, level_channels)


def test_serialization_is_deterministic():
  tile, labels, deltas = _record("float32")
  assert (schema.make_example(tile, labels, deltas, "x", (1, 2))
          == schema.make_example(tile.copy(), labels.copy(), deltas.copy(), "x", (1, 2)))


def test_tile_bytes_are_little_endian_raw():
  tile = np.arange(9 * 2, dtype=np.float32).reshape(3, 3, 2)
  example = tf.train.Example.FromString(
      schema.make_example(tile, np.zeros(9), np.zeros(36), "x", (0, 0)))
  raw = example.features.feature["tile"].bytes_list.value[0]
  np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(3, 3, 2), tile)


def test_importing_numeric_modules_and_schema_leaves_beam_and_tf_out():
  code = ("import sys; import pipeline.io.schema, pipeline.core.config;"
          "print('apache_beam' in sys.modules, 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]
