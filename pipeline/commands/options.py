"""The Beam commands' flags as Beam pipeline options.

rpn-preprocess and rpn-anchors define their flags once, in their strict
parsers (cli.Parser: one-line errors, grouped --help, examples). Each also
has a `PipelineOptions` subclass (PreprocessOptions, AnchorsOptions) whose
`_add_argparse_args` adds the same flags to Beam's parser, so that a job's
options hold them: `pipeline.options.view_as(PreprocessOptions).scales`,
`get_all_options()`, Dataflow's job options page, a Flex Template's
parameters. The launcher builds the job's options from Beam's flags plus
the project's parsed values (`job_options`).

Beam builds one parser from every PipelineOptions subclass loaded in a
process, so the options classes differ from the strict parsers in three
ways: no flag is required (a PipelineOptions parse elsewhere in the process
must not fail on them; the strict parser requires them), a flag that another
loaded class already added is skipped (rpn-preprocess and rpn-anchors share
their input and frame flags), and a list value is the text the flag takes
(`"3,6,12"`: the job's options travel as JSON and back through flags, which
would split a list). Worker processes do not import the commands, so Beam
logs "Discarding unparseable args" there (a warning, held back with the
rest of a local run's log); the workers take their settings from the pickled
steps, not from the options.
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict, Iterable, Sequence

from pipeline.commands import cli

# Flags of every command's parser that are not the job's options.
NOT_OPTIONS = frozenset({"-h", "--help", "--verbose", "--version"})


def _jsonable(value):
  """A flag's value as the job's options hold it: a list (--scales 3,6,12)
  as the text the flag takes, "3,6,12", so that it survives Beam's round trip
  through JSON and flags (which would split a list into repeated flags)."""
  return cli.list_text(value) if isinstance(value, (tuple, list)) else value


def _as_text(convert: Callable) -> Callable:
  """`convert` (it checks the text), giving the value as _jsonable's text
  (argparse shows its name in errors)."""
  @functools.wraps(convert)
  def wrapped(text):
    return _jsonable(convert(text))
  return wrapped


def option_actions(parser: argparse.ArgumentParser) -> Iterable[argparse.Action]:
  """The actions of a command's strict parser that are the job's options."""
  return [action for action in parser._actions  # noqa: SLF001 - argparse keeps them there
          if action.option_strings and not NOT_OPTIONS.intersection(action.option_strings)]


def add_to_beam_parser(beam_parser: argparse.ArgumentParser,
                       command_parser: argparse.ArgumentParser) -> None:
  """Adds the option actions of `command_parser` to Beam's parser: none
  required, lists as text, flags already there (another command's) skipped."""
  known = beam_parser._option_string_actions  # noqa: SLF001
  for action in option_actions(command_parser):
    if any(flag in known for flag in action.option_strings):
      continue
    kwargs = {"dest": action.dest, "default": _jsonable(action.default), "help": action.help}
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
      kwargs["action"] = "store_true"
    elif type(action) is argparse._StoreAction:  # noqa: SLF001
      kwargs.update(type=_as_text(action.type) if action.type else None,
                    choices=action.choices, nargs=action.nargs, metavar=action.metavar)
    else:
      raise TypeError(f"{action.option_strings[0]}: {type(action).__name__} is not "
                      f"supported as a pipeline option")
    beam_parser.add_argument(*action.option_strings, **kwargs)


def job_options(beam_args: Sequence[str], own: argparse.Namespace,
                command_parser: argparse.ArgumentParser):
  """The job's PipelineOptions: Beam's flags (`beam_args`) and the command's
  own parsed values (`own`, lists as text), so that they travel with the job."""
  from apache_beam.options.pipeline_options import PipelineOptions  # lazy, as Beam is

  values: Dict = {action.dest: _jsonable(getattr(own, action.dest))
                  for action in option_actions(command_parser) if hasattr(own, action.dest)}
  return PipelineOptions(list(beam_args), **values)
