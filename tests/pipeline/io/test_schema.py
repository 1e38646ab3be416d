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
