"""Every command's --help teaches: each flag has help and shows its default,
choice flags list their choices, the examples at the end parse, and --version
prints the package version (through the installed console scripts)."""
import argparse
import os
import shlex
import subprocess
import sys
from importlib import metadata

import pytest

from pipeline import __version__
from pipeline.commands import anchors, draw, preprocess, sample_data
from pipeline.model import registry
from trainer import cli as trainer_cli
from trainer import evaluate

PARSERS = {
    "rpn-preprocess": preprocess.build_parser, "rpn-anchors": anchors.build_parser,
    "rpn-draw": draw.build_parser, "rpn-sample-data": sample_data.build_parser,
    "rpn-train": trainer_cli.train_parser, "rpn-propose": trainer_cli.propose_parser,
    "rpn-export": trainer_cli.export_parser, "rpn-evaluate": evaluate.build_parser,
}
BEAM_COMMANDS = ("rpn-preprocess", "rpn-anchors", "rpn-propose")
# Flags whose values are a fixed set: argparse lists the choices in --help.
CHOICE_FLAGS = {
    "rpn-preprocess": ("--layout", "--compression", "--tile_dtype", "--missing_annotations"),
    "rpn-anchors": ("--missing_annotations",),
    "rpn-propose": ("--anchors", "--model"),
    "rpn-export": ("--anchors", "--model"),
}


def _options(parser):
  return [action for action in parser._actions  # noqa: SLF001 - argparse has no public list
          if action.option_strings and action.option_strings[0] not in ("-h", "--version")]


def test_every_console_script_has_a_parser_here():
  scripts = {ep.name for ep in metadata.entry_points(group="console_scripts")
             if ep.value.startswith(("pipeline.", "trainer."))}
  assert scripts == set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_help_and_shows_its_default(command):
  parser = PARSERS[command]()
  formatter = parser._get_formatter()  # noqa: SLF001
  for action in _options(parser):
    flag = action.option_strings[0]
    assert action.help and action.help.strip(), f"{command} {flag}: no help text"
    shown = formatter._get_help_string(action)  # noqa: SLF001 - what --help prints
    if action.default not in (None, False, ()):
      assert "default" in shown, f"{command} {flag}: its default is not shown: {shown!r}"
  for flag in CHOICE_FLAGS.get(command, ()):
    action = next(a for a in _options(parser) if flag in a.option_strings)
    assert action.choices, f"{command} {flag}: no choices"
    assert "{" + ",".join(action.choices) + "}" in parser.format_help()


@pytest.mark.parametrize("command", ["rpn-preprocess", "rpn-anchors"])
def test_backbone_help_lists_every_backbone(command):
  action = next(a for a in _options(PARSERS[command]()) if "--backbone" in a.option_strings)
  for name in registry.BACKBONES:
    assert name in action.help


def examples(parser) -> list:
  """The example command lines at the end of the help, continuation lines joined."""
  epilog = parser.epilog or ""
  assert epilog.startswith("examples:\n"), epilog
  lines, current = [], ""
  for line in epilog.split("\n")[1:]:
    if not line.startswith("  "):
      break
    current += " " + line.strip().rstrip("\\").strip()
    if not line.rstrip().endswith("\\"):
      lines.append(current.strip())
      current = ""
  return lines


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_examples_end_the_help_and_parse(command):
  parser = PARSERS[command]()
  found = examples(parser)
  assert 2 <= len(found) <= 3, found
  assert "examples:" in parser.format_help()
  for line in found:
    words = shlex.split(line)
    assert words[0] == command, line
    if command in BEAM_COMMANDS:
      parser.parse_with_beam(words[1:])  # Beam's flags (--runner, --project, ...) too
    else:
      parser.parse(words[1:])  # exits 2 on a flag it does not know


def test_defaults_are_shown_as_flags_take_them():
  from pipeline.commands import cli
  assert cli.show_default((3.0, 6.0, 12.0)) == "3,6,12"
  assert cli.show_default((0.5, 1, 2)) == "0.5,1,2"
  assert cli.show_default("") == "''" and cli.show_default(0) == "0"
  assert cli.show_default(None) is None and cli.show_default(False) is None
  assert cli.show_default(()) is None and cli.show_default(argparse.SUPPRESS) is None


def test_version_of_every_console_script():
  assert metadata.version("rpn-pipeline") == __version__  # setup.py reads pipeline/__init__.py
  bin_dir = os.path.dirname(sys.executable)
  running = {name: subprocess.Popen([os.path.join(bin_dir, name), "--version"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in PARSERS}
  for name, process in running.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (name, err[-2000:])
    assert out.strip() == f"{name} {__version__}", (name, out, err[-2000:])
