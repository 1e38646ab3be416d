"""docs/commands.md against the commands themselves, so that the two cannot drift.

docs/commands.md is the one place where the commands' flags are listed. For
each console script of this project (the `rpn-*` entries of the installed
package's `console_scripts` entry points), the `--flags` written in its
section of docs/commands.md (from its `## rpn-...` heading to the next `## `
heading: synopsis, table and prose alike; a short -x counts too) must be
exactly the option strings its parser accepts, -h/--help aside.

The parsers are asked, not imported: each command runs with --help in a
subprocess (all of them at once), with COLUMNS so wide that argparse puts
every option's invocation on a line of its own, and the option strings are
read from those lines. No module path of the pipeline's internals is written
here, so the test survives the modules moving; it follows setup.py's entry
points (reinstall after changing them: `make install`).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS_MD = os.path.join(ROOT, "docs", "commands.md")
DISTRIBUTION = "rpn-pipeline"
PREFIX = "rpn-"
# The console scripts of setup.py today; a new one must come with a section too.
KNOWN = ("rpn-preprocess", "rpn-anchors", "rpn-sample-data", "rpn-draw", "rpn-train",
         "rpn-propose", "rpn-export", "rpn-evaluate")
# Every command's, described once at the top of docs/commands.md.
IGNORED = frozenset({"-h", "--help", "--version"})

# A flag written in the docs: --name or -x, not inside a word ("R-CNN", "top-N"),
# not a Markdown rule (---), not a number (-1).
DOC_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*|-[A-Za-z](?![\w-]))")
# An argparse help line that starts an option: two spaces, then the invocation
# ("--input INPUT", "-o OUT, --output OUT", "--image_id [IMAGE_ID ...]"), ended
# by two spaces before its help text or by the end of the line.
HELP_OPTION = re.compile(r"^  (-\S.*?)(?: {2,}|$)")
HEADING = re.compile(r"^## +(.+?)\s*$")


def entry_points() -> Dict[str, metadata.EntryPoint]:
  """The rpn-* console scripts of the installed package, by name."""
  found = {}
  for ep in metadata.entry_points(group="console_scripts"):
    dist = getattr(ep, "dist", None)
    if ep.name.startswith(PREFIX) and (dist is None or dist.name == DISTRIBUTION):
      found[ep.name] = ep
  return found


def doc_sections(text: str) -> Dict[str, str]:
  """The `## ` sections of a Markdown text by heading (backticks dropped).
  Headings inside fenced code blocks are not headings."""
  sections: Dict[str, List[str]] = {}
  current, fenced = None, False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
    match = None if fenced else HEADING.match(line)
    if match:
      current = match.group(1).replace("`", "").strip()
      sections[current] = []
    elif current is not None:
      sections[current].append(line)
  return {name: "\n".join(lines) for name, lines in sections.items()}


def doc_flags(section: str) -> Set[str]:
  return set(DOC_FLAG.findall(section)) - IGNORED


def help_flags(help_text: str) -> Set[str]:
  """The option strings of an argparse --help text (-h/--help left out)."""
  flags = set()
  for line in help_text.splitlines():
    match = HELP_OPTION.match(line)
    if match:
      for part in match.group(1).split(", "):
        flags.add(part.split()[0])
  return flags - IGNORED


def compare(doc: Set[str], parser: Set[str]) -> Tuple[List[str], List[str]]:
  """(missing, extra): flags the parser has and the docs lack, and flags the
  docs name that the parser does not accept."""
  return sorted(parser - doc), sorted(doc - parser)


def mismatch(command: str, doc: Set[str], parser: Set[str]) -> str:
  """What is wrong with docs/commands.md's section of `command`; "" when nothing."""
  missing, extra = compare(doc, parser)
  problems = []
  if missing:
    problems.append(f"missing (the parser accepts them): {' '.join(missing)}")
  if extra:
    problems.append(f"extra (the parser does not know them): {' '.join(extra)}")
  if not problems:
    return ""
  return f"docs/commands.md, section {command}: " + "; ".join(problems)


def help_command(name: str, ep: metadata.EntryPoint) -> List[str]:
  """The console script beside this interpreter, else the entry point run by it."""
  script = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.isfile(script) and os.access(script, os.X_OK):
    return [script, "--help"]
  code = (f"import sys; from importlib.metadata import EntryPoint; sys.argv = [{name!r}, "
          f"'--help']; sys.exit(EntryPoint({name!r}, {ep.value!r}, 'console_scripts').load()())")
  return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def help_results() -> Dict[str, Tuple[Set[str], str]]:
  """Every command's (option strings, problem) from its --help, the commands
  run in parallel; the problem is "" when the help was read."""
  env = dict(os.environ, COLUMNS="1000")
  running = {name: subprocess.Popen(help_command(name, ep), cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, ep in sorted(entry_points().items())}
  results = {}
  for name, process in running.items():
    out, err = process.communicate(timeout=180)
    flags, problem = help_flags(out), ""
    if process.returncode != 0:
      problem = (f"{name} --help exited {process.returncode} (if setup.py's entry points "
                 f"changed, reinstall: make install): {err[-2000:]}")
    elif not out.startswith("usage:") or not flags:
      problem = f"no option read from {name} --help:\n{out[:2000]}"
    results[name] = (flags, problem)
  return results


def parser_flags(command: str, help_results) -> Set[str]:
  assert command in help_results, f"{command} is not an installed console script"
  flags, problem = help_results[command]
  assert not problem, problem
  return flags


@pytest.fixture(scope="module")
def sections() -> Dict[str, str]:
  with open(COMMANDS_MD, encoding="utf-8") as f:
    return doc_sections(f.read())


def test_every_console_script_is_found_and_documented(sections):
  found = entry_points()
  assert set(KNOWN) <= set(found), f"console scripts not installed: {set(KNOWN) - set(found)}"
  assert not set(found) - set(sections), f"no section in docs/commands.md for " \
      f"{sorted(set(found) - set(sections))}"
  stale = {name for name in sections if name.startswith(PREFIX)} - set(found)
  assert not stale, f"docs/commands.md has sections of commands that do not exist: {stale}"


@pytest.mark.parametrize("command", KNOWN)
def test_section_lists_exactly_the_parser_flags(command, sections, help_results):
  flags = parser_flags(command, help_results)
  assert command in sections, f"docs/commands.md has no '## {command}' section"
  problem = mismatch(command, doc_flags(sections[command]), flags)
  assert not problem, problem


def test_other_console_scripts_documented_too(sections, help_results):
  """Console scripts added after KNOWN are held to the same rule."""
  for command in sorted(set(help_results) - set(KNOWN)):
    flags = parser_flags(command, help_results)
    problem = mismatch(command, doc_flags(sections.get(command, "")), flags)
    assert not problem, problem


def test_the_comparison_reports_a_missing_and_an_extra_flag():
  text = """# Commands

## `rpn-example`

```
rpn-example --input ROOT [--split DET/train] [--verbose]
```

| flag | meaning |
| --- | --- |
| `--input` | dataset root; `--help` is never counted |
| `--splitt` | a typo |

## rpn-other

```
rpn-other --output DIR
```
"""
  help_text = """usage: rpn-example [-h] [--verbose] --input INPUT [--split SPLIT] [--count N]

options:
  -h, --help            show this help message and exit
  --verbose             print more
  --input INPUT         dataset root
  --split SPLIT
  -n N, --count N       how many
"""
  parsed = doc_sections(text)
  assert set(parsed) == {"rpn-example", "rpn-other"}  # "# Commands" is no `## ` section
  assert doc_flags(parsed["rpn-example"]) == {"--input", "--split", "--verbose", "--splitt"}
  assert help_flags(help_text) == {"--verbose", "--input", "--split", "-n", "--count"}
  missing, extra = compare(doc_flags(parsed["rpn-example"]), help_flags(help_text))
  assert missing == ["--count", "-n"]
  assert extra == ["--splitt"]
  message = mismatch("rpn-example", doc_flags(parsed["rpn-example"]), help_flags(help_text))
  assert "missing (the parser accepts them): --count -n" in message
  assert "extra (the parser does not know them): --splitt" in message
  assert mismatch("rpn-other", doc_flags(parsed["rpn-other"]), {"--output"}) == ""
