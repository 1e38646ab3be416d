"""Checks on the launching machine, before any Beam step or training step runs.

Each check raises cli.UsageError (one line naming the flag and its value, and
what to do) or returns quietly. They are cheap also on gs:// with hundreds of
thousands of files: existence is a glob with a limit, never a full listing.
Nothing here writes anything that stays: the output check writes a probe
file and deletes it.

The backbone check (weights that Keras can get or load, a --feature_layer the
backbone has) needs TensorFlow, whose import alone prints lines on stderr: it
is pipeline.commands.backbone_check, a child process started before these
checks so that it overlaps with them.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from typing import List, Optional, Sequence

from pipeline.commands.cli import UsageError, one_line
from pipeline.io import ilsvrc, storage

# Files listed at most to decide that a remote folder holds no image.
LISTING_LIMIT = 1000
# Files listed at most to name the splits of a remote root.
SPLIT_LISTING_LIMIT = 5000
MAX_SPLITS_NAMED = 12


def match(pattern: str, limit: int) -> List[str]:
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  try:
    FileSystems.get_filesystem(pattern)
  except ValueError as e:  # a scheme no installed filesystem serves (gs:// without [gcp])
    raise UsageError(None, None, f"{pattern.rsplit('/', 1)[0]}: {one_line(e)}") from None
  try:
    result = FileSystems.match([pattern], limits=[limit])[0]
  except Exception as e:  # BeamIOError: the store refused (credentials, network)
    # A missing folder lists as empty on every filesystem: this is something else.
    raise UsageError(None, None, f"{pattern}: cannot list it "
                     f"({one_line(e)[:300]})") from None
  return [m.path for m in result.metadata_list]


def is_dir(path: str) -> bool:
  """A local directory, or a remote prefix with at least one object under it."""
  if storage.is_local(path):
    return os.path.isdir(path)
  return bool(match(path.rstrip("/") + "/**", 1))


def _first_file(directory: str, extensions: Sequence[str]) -> Optional[str]:
  """A file under `directory` (recursive) ending in one of `extensions`, or None;
  stops at the first. Remote: among the first LISTING_LIMIT objects; when there
  are that many and none matches, the folder counts as holding some (the
  workers' listing decides)."""
  extensions = tuple(extensions)
  if storage.is_local(directory):
    for dirpath, dirnames, filenames in os.walk(directory):
      dirnames.sort()
      for name in sorted(filenames):
        if name.endswith(extensions):
          return os.path.join(dirpath, name)
    return None
  listed = match(directory.rstrip("/") + "/**", LISTING_LIMIT)
  found = [p for p in listed if p.endswith(extensions)]
  if found:
    return found[0]
  return listed[0] if len(listed) >= LISTING_LIMIT else None


def splits_under(folder: str) -> List[str]:
  """The splits (two levels: DET/train, CLS-LOC/val, ...) that exist under `folder`."""
  if storage.is_local(folder):
    found = []
    try:
      for first in sorted(os.scandir(folder), key=lambda e: e.name):
        if first.is_dir():
          seconds = sorted(e.name for e in os.scandir(first.path) if e.is_dir())
          found += [f"{first.name}/{second}" for second in seconds] or [first.name]
    except OSError:
      return []
    return found
  prefix = folder.rstrip("/") + "/"
  found = set()
  for path in match(prefix + "**", SPLIT_LISTING_LIMIT):
    parts = path[len(prefix):].split("/")
    if len(parts) >= 3:
      found.add("/".join(parts[:2]))
  return sorted(found)


def _named(items: Sequence[str]) -> str:
  if not items:
    return "none"
  more = len(items) - MAX_SPLITS_NAMED
  return ", ".join(items[:MAX_SPLITS_NAMED]) + (f" and {more} more" if more > 0 else "")


def _extensions() -> str:
  return ", ".join(sorted({e.lower() for e in ilsvrc.IMAGE_EXTENSIONS}))


def check_root(input_root: str, flag: str = "--input", folder: str = "Data") -> None:
  """ROOT exists and has `folder` (Data, or Annotations where only those are read)."""
  if not is_dir(input_root):
    raise UsageError(flag, input_root, "no such directory")
  if not is_dir(storage.join(input_root, folder)):
    raise UsageError(flag, input_root, f"has no {folder}/ folder; the ILSVRC 2015+ layout is "
                     "ROOT/Data/<split> and ROOT/Annotations/<split> (for the 2014 layout, pass "
                     "--images DIR --annotations DIR instead of --input)")


def check_split(input_root: str, split: str, folder: str = "Data") -> str:
  """The split's directory under ROOT/folder; a UsageError listing the splits
  that exist when it does not."""
  root = storage.join(input_root, folder)
  directory = storage.join(root, split.strip("/"))
  if not is_dir(directory):
    raise UsageError("--split", split, f"no such split under {root}; found "
                     f"{_named(splits_under(root))}")
  return directory


def check_images(directory: str, flag: str, value: str) -> None:
  if not is_dir(directory):
    raise UsageError(flag, value, f"no such directory ({directory})")
  if _first_file(directory, ilsvrc.IMAGE_EXTENSIONS) is None:
    raise UsageError(flag, value, f"no image files ({_extensions()}) under {directory}")


def check_image_set(path: str) -> None:
  """--image_set: readable, and lists at least one id (first line read only)."""
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  try:
    with FileSystems.open(path) as f:
      head = f.read(1 << 16)
  except Exception as e:  # BeamIOError, OSError, ...: not found, a folder, no permission
    reason = "no such file" if not storage.exists(path) else f"cannot be read ({one_line(e)})"
    raise UsageError("--image_set", path, reason) from None
  try:
    text = head.decode("utf-8")
  except UnicodeDecodeError:
    text = head.decode("utf-8", errors="replace")
    if "\ufffd" in text[:-4]:  # a multi-byte character cut at the end is fine
      raise UsageError("--image_set", path, "is not a text file (expected lines "
                       "'<image id> [index]')") from None
  if not ilsvrc.parse_image_set(text):
    raise UsageError("--image_set", path, "lists no image id (expected lines "
                     "'<image id> [index]')")


def check_ilsvrc_input(input_root: Optional[str], split: str, images: Optional[str],
                       annotations: Optional[str], image_set: Optional[str] = None,
                       missing_annotations: str = "skip") -> None:
  """--input/--split or --images/--annotations (and --image_set) of rpn-preprocess,
  rpn-anchors and rpn-draw: every folder exists and the images are there."""
  images_dir, annotations_dir = ilsvrc.layout_roots(input_root, split, images, annotations)
  if input_root:
    check_root(input_root)
    check_split(input_root, split)
    check_images(images_dir, "--split", split)
    if missing_annotations == "skip" and not is_dir(annotations_dir):
      raise UsageError("--split", split, f"no annotations ({annotations_dir} does not exist), "
                       f"so every image would be skipped; pass --missing_annotations negative "
                       f"to use them as negatives only")
  else:
    check_images(images_dir, "--images", images)
    if not is_dir(annotations_dir):
      raise UsageError("--annotations", annotations, "no such directory")
  if image_set:
    check_image_set(image_set)


def check_output(path: str, flag: str = "--output") -> None:
  """`path` can be made a directory and written: a probe file is written and
  deleted (locally in the nearest existing ancestor; nothing is created)."""
  if storage.is_local(path):
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
      raise UsageError(flag, path, "is a file, not a directory")
    ancestor = target
    while not os.path.exists(ancestor):
      ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
      raise UsageError(flag, path, f"cannot be made: {ancestor} is a file, not a directory")
    try:
      fd, probe = tempfile.mkstemp(prefix=".rpn-write-check-", dir=ancestor)
      os.close(fd)
      os.remove(probe)
    except OSError as e:
      raise UsageError(flag, path, f"cannot write in {ancestor} ({e.strerror or e})") from None
    return
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  try:
    probe = FileSystems.join(path, f".rpn-write-check-{uuid.uuid4().hex}")
    with FileSystems.create(probe) as f:
      f.write(b"")
    FileSystems.delete([probe])
  except Exception as e:  # BeamIOError, credentials, unknown scheme, ...
    raise UsageError(flag, path, f"cannot write there ({one_line(e)[:300]})") from None


def check_file(path: str, flag: str) -> None:
  if not storage.exists(path):
    raise UsageError(flag, path, "no such file")


def check_weights_path(weights: str, flag: str = "--weights") -> None:
  """A weights PATH exists (imagenet and none are not paths)."""
  if weights not in ("imagenet", "none", "", None):
    if storage.is_local(weights) and os.path.isdir(weights):
      raise UsageError(flag, weights, "is a directory; pass the weights file (.h5 or "
                       ".weights.h5)")
    check_file(weights, flag)


# ---------------------------------------------------------------------------
# The backbone check, in a child process


