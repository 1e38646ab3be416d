"""Layering: the pipeline package imports neither the trainer nor TensorFlow.

Importing any `pipeline` module, each in a fresh interpreter, leaves no
`trainer` and no `tensorflow` module in sys.modules (backbone.py imports
TensorFlow inside its functions, so it is held to the same rule); and no
file of `pipeline/` has an import statement of `trainer`, at module level or
inside a function.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_DIR = os.path.join(ROOT, "pipeline")
FORBIDDEN = ("trainer", "tensorflow")
# Modules allowed to import TensorFlow at module level (none today; backbone
# would be the one to add here if it ever had to).
TENSORFLOW_ALLOWED = frozenset()

CHILD = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _sources():
  return sorted(name for name in os.listdir(PIPELINE_DIR) if name.endswith(".py"))


def _module(filename):
  stem = filename[:-3]
  return "pipeline" if stem == "__init__" else f"pipeline.{stem}"


MODULES = [_module(name) for name in _sources()]


def test_the_package_has_modules():
  assert "pipeline" in MODULES and "pipeline.commands.preprocess" in MODULES and "pipeline.model.backbone" in MODULES
  assert len(MODULES) >= 10


@pytest.fixture(scope="module")
def imported_modules():
  """{module: (returncode, sorted sys.modules or stderr)}, one fresh interpreter
  per module, all started at once so that the whole check takes a few seconds."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  children = {module: subprocess.Popen([sys.executable, "-c", CHILD, module], cwd=ROOT,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
              for module in MODULES}
  results = {}
  for module, child in children.items():
    stdout, stderr = child.communicate(timeout=120)
    if child.returncode == 0:
      results[module] = (0, json.loads(stdout.strip().splitlines()[-1]))
    else:
      results[module] = (child.returncode, stderr[-3000:])
  return results


def _forbidden(loaded, top):
  return sorted(m for m in loaded if m == top or m.startswith(top + "."))


@pytest.mark.parametrize("module", MODULES)
def test_importing_leaves_out_trainer_and_tensorflow(module, imported_modules):
  returncode, loaded = imported_modules[module]
  assert returncode == 0, f"import {module} failed:\n{loaded}"
  assert module in loaded
  assert not _forbidden(loaded, "trainer"), f"import {module} imports the trainer"
  if module not in TENSORFLOW_ALLOWED:
    assert not _forbidden(loaded, "tensorflow"), f"import {module} imports TensorFlow"


def _trainer_imports(path):
  """(line, statement) of every import of `trainer` in the file, at any depth."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      # `from trainer import x`, `from trainer.y import x`, and relative forms
      # reaching the top (`from .. import trainer`, `from ..trainer import x`).
      names = [node.module or ""]
      if node.level and not node.module:
        names = [alias.name for alias in node.names]
    else:
      continue
    if any(name == "trainer" or name.startswith("trainer.") for name in names):
      found.append((node.lineno, ast.unparse(node)))
  return found


def test_the_static_check_finds_imports_inside_functions(tmp_path):
  path = tmp_path / "sample.py"
  path.write_text("import os\n"
                  "def f():\n"
                  "  from trainer import model\n"
                  "  import trainer.data as d\n"
                  "class C:\n"
                  "  def g(self):\n"
                  "    from trainer_extra import x\n"
                  "    from .. import trainer\n")
  assert [line for line, _ in _trainer_imports(str(path))] == [3, 4, 8]


@pytest.mark.parametrize("filename", _sources())
def test_no_pipeline_file_imports_the_trainer(filename):
  assert _trainer_imports(os.path.join(PIPELINE_DIR, filename)) == []


# The trainer's command-line front ends check their flags before TensorFlow
# loads (its import alone takes seconds and prints lines on stderr).
TRAINER_FRONT_ENDS = ("trainer.cli", "trainer.settings", "trainer.evaluate")


@pytest.mark.parametrize("module", TRAINER_FRONT_ENDS)
def test_trainer_front_ends_leave_out_tensorflow(module):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  result = subprocess.run([sys.executable, "-c", CHILD, module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  assert module in loaded and not _forbidden(loaded, "tensorflow")
