"""Layering: pipeline/ is one package per layer, and imports go only downward.

    core <- io <- model <- beam <- commands      (then the trainer, on top)

- core: numpy (and Pillow) only: boxes, anchors, targets, proposals, the
  frame; no Beam, no TensorFlow, no Keras, at any depth.
- io: records and files (schema, manifest, shards, storage, dataset readers,
  image decoding); model: the backbone; beam: the Beam programs; commands:
  the console scripts' front ends.
- A module imports pipeline modules of its own layer or a lower one only, at
  module level or inside a function (the static check walks every file of
  every subpackage); no pipeline module imports the trainer.
- Importing any pipeline module, each in a fresh interpreter, leaves no
  `trainer` and no `tensorflow` module in sys.modules (TensorFlow is imported
  inside the functions that need it).
"""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_DIR = os.path.join(ROOT, "pipeline")
LAYERS = ("core", "io", "model", "beam", "commands")  # lowest first
# What no file of the layer may import, at any depth.
LAYER_FORBIDS = {"core": ("apache_beam", "tensorflow", "keras", "trainer")}

CHILD = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _files():
  """Paths of every .py file under pipeline/, relative to the repository root."""
  found = []
  for folder, _, names in os.walk(PIPELINE_DIR):
    found += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".py")]
  return sorted(found)


def _module(path):
  parts = path[:-3].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module):
  """The layer of a pipeline module ("core", ...), or None for `pipeline` itself."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


FILES = _files()
MODULES = [_module(path) for path in FILES]


def test_pipeline_is_the_layer_folders():
  """pipeline/ holds its __init__ and one package per layer, nothing else."""
  top = sorted(n for n in os.listdir(PIPELINE_DIR) if not n.startswith(("_", ".")))
  assert top == sorted(LAYERS)
  assert all(_layer(m) in LAYERS for m in MODULES if m != "pipeline")
  assert {"pipeline.commands.preprocess", "pipeline.beam.preprocess",
          "pipeline.model.backbone", "pipeline.core.targets"} <= set(MODULES)


def imports_of(path):
  """(line, imported module) of every import in the file, at any depth;
  `from pipeline.core import boxes` yields pipeline.core.boxes."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: not used in this project, refused below
        found.append((node.lineno, "." * node.level + (node.module or "")))
        continue
      found.append((node.lineno, node.module))
      found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
  return found


def _violations(path):
  """Imports of `path` that break the layering, as readable lines."""
  module = _module(path)
  layer = _layer(module)
  bad = []
  for line, name in imports_of(os.path.join(ROOT, path)):
    if bad and bad[-1].startswith(f"{path}:{line}:"):
      continue  # one line per import statement
    top = name.split(".")[0]
    if name.startswith("."):
      bad.append(f"{path}:{line}: relative import {name}")
    elif top == "trainer":
      bad.append(f"{path}:{line}: imports the trainer ({name})")
    elif top in LAYER_FORBIDS.get(layer, ()):
      bad.append(f"{path}:{line}: the {layer} layer imports {name}")
    elif top == "pipeline" and layer is not None:
      target = _layer(name)
      if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
        bad.append(f"{path}:{line}: {layer} imports {name}, a layer above it ({target})")
  return bad


@pytest.mark.parametrize("path", FILES)
def test_imports_go_only_downward(path):
  assert _violations(path) == []


def test_the_static_check_finds_each_kind_of_break(tmp_path, monkeypatch):
  """Upward, trainer and forbidden imports, inside functions too, are found."""
  core = tmp_path / "pipeline" / "core"
  core.mkdir(parents=True)
  (core / "sample.py").write_text(
      "import os\n"
      "from pipeline.core import boxes\n"
      "def f():\n"
      "  from pipeline.beam import dofns\n"
      "  import trainer.data as d\n"
      "class C:\n"
      "  def g(self):\n"
      "    import tensorflow as tf\n"
      "    from pipeline.io import storage\n"
      "    from . import boxes\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  found = _violations(os.path.join("pipeline", "core", "sample.py"))
  assert [line.split(":")[1] for line in found] == ["4", "5", "8", "9", "10"]


@pytest.fixture(scope="module")
def imported_modules():
  """{module: (returncode, sorted sys.modules or stderr)}, one fresh interpreter
  per module, a few at a time so that the whole check takes seconds."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  results = {}
  pending = list(MODULES)
  while pending:
    batch, pending = pending[:12], pending[12:]
    children = {module: subprocess.Popen([sys.executable, "-c", CHILD, module], cwd=ROOT,
                                         env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                for module in batch}
    for module, child in children.items():
      stdout, stderr = child.communicate(timeout=180)
      if child.returncode == 0:
        results[module] = (0, json.loads(stdout.strip().splitlines()[-1]))
      else:
        results[module] = (child.returncode, stderr[-3000:])
  return results


def _loaded(loaded, top):
  return sorted(m for m in loaded if m == top or m.startswith(top + "."))


@pytest.mark.parametrize("module", MODULES)
def test_importing_leaves_out_trainer_and_tensorflow(module, imported_modules):
  returncode, loaded = imported_modules[module]
  assert returncode == 0, f"import {module} failed:\n{loaded}"
  assert module in loaded
  assert not _loaded(loaded, "trainer"), f"import {module} imports the trainer"
  assert not _loaded(loaded, "tensorflow"), f"import {module} imports TensorFlow"
  if _layer(module) == "core":
    assert not _loaded(loaded, "apache_beam"), f"import {module} imports Beam"


# The trainer's command-line front ends check their flags before TensorFlow
# loads (its import alone takes seconds and prints lines on stderr).
TRAINER_FRONT_ENDS = ("trainer.cli", "trainer.settings", "trainer.evaluate", "trainer.arguments",
                      "trainer.sampling", "trainer.job")


@pytest.mark.parametrize("module", TRAINER_FRONT_ENDS)
def test_trainer_front_ends_leave_out_tensorflow(module):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  result = subprocess.run([sys.executable, "-c", CHILD, module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  assert module in loaded and not _loaded(loaded, "tensorflow")
