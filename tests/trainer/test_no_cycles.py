"""No import circle among the trainer's modules.

The graph is read statically with `ast`: an edge from trainer.a to trainer.b
for every import of b in a's file, at module level or inside a function or
class (a lazy import closes a circle as surely as one at the top). The
front ends (trainer/cli.py) import the training and proposing modules, which
must not import them back: what both need (typed arguments, the maps
sampling, the job directory) lives in modules below both.
"""
import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "trainer"


def modules(root: str, package: str = PACKAGE) -> Dict[str, str]:
  """{module name: file path} of every .py file of `package` under `root`."""
  found = {}
  for folder, _, names in os.walk(os.path.join(root, package)):
    for name in names:
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (
            os.path.join(folder, name))
  return found


def imported(path: str, module: str) -> Set[str]:
  """Every module name `path` (the file of `module`) imports, at any depth;
  `from trainer import data` counts as trainer.data too."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package of `module`
        anchor = module.split(".")[:-node.level]
        base = ".".join(anchor + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def import_graph(root: str, package: str = PACKAGE) -> Dict[str, Set[str]]:
  """{module: the package's modules it imports} (a module importing itself left out)."""
  found = modules(root, package)
  graph = {}
  for module, path in found.items():
    targets = {name for name in imported(path, module) if name in found and name != package}
    graph[module] = targets - {module}
  return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """A cycle of `graph` as [a, b, ..., a], or None when it has none (depth-first
  search; a node met again while still on the path closes a cycle)."""
  state: Dict[str, int] = {}  # 1: on the current path, 2: done
  path: List[str] = []

  def visit(node: str) -> Optional[List[str]]:
    state[node] = 1
    path.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_trainer_has_no_import_cycle():
  graph = import_graph(ROOT)
  assert {"trainer.cli", "trainer.train", "trainer.propose", "trainer.job"} <= set(graph)
  assert "trainer.train" in graph["trainer.cli"]  # the lazy import is an edge
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond
  assert find_cycle({"d": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_an_import_inside_a_function_closes_a_cycle(tmp_path):
  """A made-up package: front imports back lazily, back imports front at the top."""
  package = tmp_path / "made_up"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "front.py").write_text(
      "import os\n"
      "def main():\n"
      "  from made_up import back\n"
      "  return back.run()\n")
  (package / "back.py").write_text(
      "from made_up.front import main\n"
      "def run():\n"
      "  return 0\n")
  (package / "other.py").write_text("from . import back\n")
  graph = import_graph(str(tmp_path), "made_up")
  assert graph == {"made_up": set(), "made_up.front": {"made_up.back"},
                   "made_up.back": {"made_up.front"}, "made_up.other": {"made_up.back"}}
  assert find_cycle(graph) == ["made_up.back", "made_up.front", "made_up.back"]
