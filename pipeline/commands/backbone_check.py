"""The child process of preflight.BackboneCheck: builds the backbone as a worker
would and answers in one JSON line on stdout.

    python -m pipeline.commands.backbone_check '{"backbone": ..., "weights": ...,
                                               "feature_layer": ...,
                                        "seed": 0, "weights_flag": "--weights"}'

Answer: {"ok": true, "layer_info": {...}} or {"flag", "value", "error"}: a
--feature_layer the backbone does not have (checked on the architecture, no
weights), then weights Keras cannot get ("imagenet" offline) or cannot load
(missing, unreadable, made for another backbone). Its stderr (TensorFlow's
start-up lines) is read by the parent and dropped.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Dict

from pipeline.model import backbone as backbone_lib
from pipeline.model import layers

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
  try:
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
  return {"ok": True, "layer_info": layers.layer_info_dict(info, layer),
          "weights_file": loaded}


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
