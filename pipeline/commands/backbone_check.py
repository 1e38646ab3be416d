"""The backbone check: the launcher's half, and the child process's.

The launcher (rpn-preprocess, rpn-anchors, rpn-propose) checks what it can
without TensorFlow (`start_backbone_check`: the backbone's name, a weights
file's existence), then starts this module as a child process, which builds
the backbone as a worker would and answers in one JSON line on stdout:

    python -m pipeline.commands.backbone_check '{"backbone": ..., "weights": ...,
        "feature_layer": ..., "seed": 0, "weights_flag": "--weights"}'

Answer: {"ok": true, "layer_info": {...}} or {"flag", "value", "error"}: a
--feature_layer the backbone does not have (checked on the architecture, no
weights), then weights Keras cannot get ("imagenet" offline) or cannot load
(missing, unreadable, made for another backbone). Its stderr (TensorFlow's
start-up lines) is read by the parent and dropped. `BackboneCheck` runs the
child beside the command's other checks (`Checks`) and remembers a passed
check (cache_path()), so that it costs a run once per weights file.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Optional

from pipeline.commands import preflight
from pipeline.commands.cli import UsageError, one_line
from pipeline.io import storage
from pipeline.model import backbone as backbone_lib
from pipeline.model import layers, registry

# The repository root: the child runs `python -m` from it, like the launcher.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Keras' load error lists every layer it could not load; one example is enough.
_KERAS_EXAMPLE = re.compile(r"Layer '([^']+)' expected (\d+) variables?, but received (\d+)")


def weights_problem(error: Exception, backbone: str) -> str:
  """One line from WeightsUnavailableError's (often many-line) message."""
  cause = error.__cause__
  if not str(error).startswith("could not load weights file") or cause is None:
    return " ".join(str(error).split())  # e.g. imagenet offline: the message says what to do
  text = " ".join(str(cause).split())
  if isinstance(cause, Exception):
    example = _KERAS_EXAMPLE.search(str(cause))
    total = re.search(r"A total of (\d+) objects could not be loaded", str(cause))
    if example or total or "shape" in text.lower() or "layer" in text.lower():
      detail = (f"layer {example.group(1)} expects {example.group(2)} variables, the file has "
                f"{example.group(3)}" if example else text[:200])
      count = f"{total.group(1)} layers do not load; " if total else ""
      return (f"does not fit {backbone} without top ({count}{detail}): is it the weights file "
              f"of another backbone? Pass the --backbone it was made for")
  return f"cannot be loaded into {backbone} ({text[:300]})"


def check(request: Dict) -> Dict:
  backbone, weights = request["backbone"], request.get("weights") or "none"
  layer, flag = request.get("feature_layer") or None, request.get("weights_flag", "--weights")
  levels = request.get("feature_layers") or []
  level_infos = []
  try:
    if levels:
      try:
        level_infos = [layers.layer_info_dict(info, info.name)
                       for info in layers.check_feature_levels(backbone, levels)]
      except layers.FeatureLayerError as e:
        shown = ",".join(levels)
        message = " ".join(str(e).split()).removeprefix(f"--feature_layers {shown}: ")
        return {"flag": "--feature_layers", "value": shown, "error": message}
    info = layers.check_feature_layer(backbone, layer)
  except layers.FeatureLayerError as e:
    message = " ".join(str(e).split())
    if message.startswith("--feature_layer"):  # names the flag and value already
      return {"flag": None, "value": None, "error": message}
    return {"flag": "--feature_layer", "value": layer, "error": message}
  except ValueError as e:
    return {"flag": "--backbone", "value": backbone, "error": str(e)}
  fetched = []
  if weights == "imagenet":
    _record_fetches(fetched)
  if weights != "none":
    try:
      backbone_lib.build_backbone(backbone, weights, int(request.get("seed", 0)), layer)
    except backbone_lib.WeightsUnavailableError as e:
      return {"flag": flag, "value": weights, "error": weights_problem(e, backbone)}
    except ValueError as e:
      return {"flag": flag, "value": weights, "error": " ".join(str(e).split())}
  loaded = fetched[-1] if fetched else (None if weights in ("none", "imagenet") else weights)
  answer = {"ok": True, "layer_info": layers.layer_info_dict(info, layer),
            "weights_file": loaded}
  if level_infos:
    answer["level_infos"] = level_infos
  return answer


def _record_fetches(fetched: list) -> None:
  """Appends to `fetched` the path of each file Keras' get_file returns (the
  ImageNet weights, downloaded or from its cache), so the parent can tell by
  that file whether a passed check still holds. Without Keras' file_utils (a
  future Keras), nothing is recorded and the check is not remembered."""
  try:
    from keras.src.utils import file_utils
  except ImportError:
    return
  get_file = file_utils.get_file

  def recording(*args, **kwargs):
    path = get_file(*args, **kwargs)
    fetched.append(str(path))
    return path
  file_utils.get_file = recording


def main() -> int:
  answer = check(json.loads(sys.argv[1]))
  sys.stdout.write("\n" + json.dumps(answer) + "\n")
  sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())


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
  found = preflight.match(path, 1)
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
               weights_flag: str = "--weights", always: bool = False, feature_layers=()):
    self.request = {"backbone": backbone, "weights": weights or "none",
                    "feature_layer": feature_layer or None, "seed": seed,
                    "weights_flag": weights_flag}
    if len(feature_layers) > 1:  # only then, so that one level's cache keys stay the same
      self.request["feature_layers"] = list(feature_layers)
    self._process: Optional[subprocess.Popen] = None
    self._always = always
    self._cached: Optional[Dict] = None
    self.from_cache = False

  def _cache_key(self) -> str:
    asked = {k: self.request[k] for k in ("backbone", "weights", "feature_layer",
                                          "feature_layers") if k in self.request}
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
        cwd=REPO)
    return self

  def cancel(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.kill()
      self._process.communicate()

  def result(self) -> Optional[Dict]:
    if self._cached is not None:
      _prime(self._cached)
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
    _prime(answer)
    self._remember(answer)
    return answer


def _prime(answer: Dict) -> None:
  """Fills this process's feature-layer cache with the layers the child checked."""
  for info in [answer.get("layer_info")] + list(answer.get("level_infos") or []):
    if info:
      layers.remember_layer_info(info)


def start_backbone_check(backbone: str, weights: str, feature_layer: Optional[str],
                         seed: int = 0, weights_flag: str = "--weights",
                         always: bool = False, feature_layers=()) -> BackboneCheck:
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
  preflight.check_weights_path(weights, weights_flag)
  return BackboneCheck(backbone, weights, feature_layer, seed, weights_flag, always,
                       feature_layers).start()


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
