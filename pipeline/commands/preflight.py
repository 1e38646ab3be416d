"""Checks on the launching machine, before any Beam step or training step runs.

Each check raises cli.UsageError (one line naming the flag and its value, and
what to do) or returns quietly. They are cheap also on gs:// with hundreds of
thousands of files: existence is a glob with a limit, never a full listing.
Nothing here writes anything that stays: the output check writes a probe
file and deletes it.

The backbone check (weights that Keras can get or load, a --feature_layer the
backbone has) needs TensorFlow, whose import alone prints lines on stderr; it
runs in a child process (`python -m pipeline.commands.backbone_check`) started before
the other checks, so that it overlaps with them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from typing import Dict, List, Optional, Sequence

from pipeline.commands.cli import UsageError, one_line
from pipeline.io import ilsvrc, storage
from pipeline.model import layers, registry

# Files listed at most to decide that a remote folder holds no image.
LISTING_LIMIT = 1000
# Files listed at most to name the splits of a remote root.
SPLIT_LISTING_LIMIT = 5000
MAX_SPLITS_NAMED = 12


def _match(pattern: str, limit: int) -> List[str]:
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
  return bool(_match(path.rstrip("/") + "/**", 1))


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
  listed = _match(directory.rstrip("/") + "/**", LISTING_LIMIT)
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
  for path in _match(prefix + "**", SPLIT_LISTING_LIMIT):
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


CACHE_NAME = "backbone-checks.json"


def cache_path() -> str:
  """Where passed backbone checks are remembered: $RPN_CACHE_DIR, else
  $XDG_CACHE_HOME/rpn-pipeline, else ~/.cache/rpn-pipeline."""
  directory = os.environ.get("RPN_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "rpn-pipeline")
  return os.path.join(directory, CACHE_NAME)


def _versions() -> Dict[str, Optional[str]]:
  from importlib import metadata
  found = {}
  for name in ("rpn-pipeline", "keras", "tensorflow", "tensorflow-cpu"):
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = None
  return found


def file_stamp(path: str) -> Optional[Dict]:
  """{path, size, modified} of a file (local or remote), None when it is not there."""
  if storage.is_local(path):
    try:
      stat = os.stat(path)
    except OSError:
      return None
    return {"path": os.path.abspath(path), "size": stat.st_size, "modified": stat.st_mtime_ns}
  found = _match(path, 1)
  if not found:
    return None
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  meta = FileSystems.match([path], limits=[1])[0].metadata_list[0]
  return {"path": path, "size": meta.size_in_bytes,
          "modified": getattr(meta, "last_updated_in_seconds", None)}


def _read_cache() -> Dict:
  try:
    with open(cache_path(), encoding="utf-8") as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):
    return {}


class BackboneCheck:
  """The child process checking a backbone's --feature_layer and --weights.

  start() returns at once; result() waits, raises the child's UsageError or
  primes this process's feature-layer cache with what the child found (so the
  launcher never builds the net itself); cancel() ends it.

  A check that passed is remembered (cache_path(): the backbone, layer and
  weights asked for, the versions of this package, Keras and TensorFlow, and
  the size and modification time of the weights file that loaded, for
  "imagenet" the file Keras fetched). While all of these stay the same the
  child is not started again: the check costs a run once per weights file,
  not once per run. Failures are never remembered.
  """

  def __init__(self, backbone: str, weights: str, feature_layer: Optional[str], seed: int = 0,
               weights_flag: str = "--weights", always: bool = False):
    self.request = {"backbone": backbone, "weights": weights or "none",
                    "feature_layer": feature_layer or None, "seed": seed,
                    "weights_flag": weights_flag}
    self._process: Optional[subprocess.Popen] = None
    self._always = always
    self._cached: Optional[Dict] = None
    self.from_cache = False

  def _cache_key(self) -> str:
    asked = {k: self.request[k] for k in ("backbone", "weights", "feature_layer")}
    return json.dumps(dict(asked, versions=_versions()), sort_keys=True)

  def _lookup(self) -> Optional[Dict]:
    entry = _read_cache().get(self._cache_key())
    if not isinstance(entry, dict) or "answer" not in entry:
      return None
    stamp = entry.get("weights_file")
    if stamp is not None and file_stamp(stamp["path"]) != stamp:
      return None  # the file changed (or went): check again
    return entry["answer"]

  def _remember(self, answer: Dict) -> None:
    loaded = answer.get("weights_file")
    if self.request["weights"] != "none" and not loaded:
      return  # which file loaded is unknown: nothing to tell a change by
    stamp = file_stamp(loaded) if loaded else None
    if loaded and stamp is None:
      return
    path = cache_path()
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      cache = _read_cache()
      cache[self._cache_key()] = {"answer": answer, "weights_file": stamp}
      fd, temp = tempfile.mkstemp(prefix=".checks-", dir=os.path.dirname(path))
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
      os.replace(temp, path)
    except OSError:  # a read-only home: the check just runs every time
      pass

  @property
  def needed(self) -> bool:
    return (self._always or self.request["weights"] != "none"
            or bool(self.request["feature_layer"]))

  def start(self) -> "BackboneCheck":
    if not self.needed:
      return self
    self._cached = self._lookup()
    if self._cached is not None:
      self.from_cache = True
      return self
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    self._process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.backbone_check", json.dumps(self.request)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return self

  def cancel(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.kill()
      self._process.communicate()

  def result(self) -> Optional[Dict]:
    if self._cached is not None:
      if self._cached.get("layer_info"):
        layers.remember_layer_info(self._cached["layer_info"])
      return self._cached
    if self._process is None:
      return None
    stdout, stderr = self._process.communicate()
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    try:
      answer = json.loads(lines[-1])
    except (IndexError, ValueError):
      tail = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
      raise UsageError(self.request["weights_flag"], self.request["weights"],
                       f"checking the {self.request['backbone']} backbone failed (exit code "
                       f"{self._process.returncode}: {one_line(tail[-1] if tail else '')[:300]})"
                       ) from None
    if "error" in answer:
      raise UsageError(answer["flag"], answer["value"], answer["error"])
    if answer.get("layer_info"):
      layers.remember_layer_info(answer["layer_info"])
    self._remember(answer)
    return answer


def start_backbone_check(backbone: str, weights: str, feature_layer: Optional[str],
                         seed: int = 0, weights_flag: str = "--weights",
                         always: bool = False) -> BackboneCheck:
  """Checks what needs no TensorFlow now (the backbone's name, a weights file's
  existence), then starts the child process for the rest: when there are
  weights to load or a feature layer to check, or `always` (the caller needs
  the layer's shape arithmetic, which the child hands over)."""
  try:
    registry.backbone_spec(backbone)
  except ValueError as e:
    raise UsageError("--backbone", backbone, "no such backbone; "
                     + str(e).split("; ", 1)[-1]) from None
  if backbone == registry.TINY_BACKBONE and weights not in ("none", "", None):
    raise UsageError(weights_flag, weights, f"{backbone} has no pretrained weights; pass "
                     f"--weights none")
  check_weights_path(weights, weights_flag)
  return BackboneCheck(backbone, weights, feature_layer, seed, weights_flag, always).start()


class Checks:
  """Runs a command's checks in order; the backbone check runs beside them and is
  cancelled when another check fails first."""

  def __init__(self, backbone_check: Optional[BackboneCheck] = None):
    self.backbone_check = backbone_check

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is not None and self.backbone_check is not None:
      self.backbone_check.cancel()
    return False

  def finish(self) -> Optional[Dict]:
    return self.backbone_check.result() if self.backbone_check else None
