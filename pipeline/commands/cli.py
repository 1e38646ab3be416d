"""What every console script shares: flags parsed strictly, errors in one line.

A mistake the launching machine can see (a mistyped flag, a path that does
not exist, an output that cannot be written) ends the command before it does
any work, with exit code 2 and exactly one line on stderr:

    rpn-preprocess: error: --split DET/trian: no such split under d/Data; found DET/train, DET/val

No traceback, no usage block, nothing written. Stdlib only: the commands parse
their flags and run their checks before TensorFlow is imported (its import
alone prints lines on stderr).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

EXIT_USAGE = 2
EXIT_FAILURE = 1


class RunState:
  """What run_command needs to know of a command's run when it fails: where
  its output is (the failure log goes there), the flag that names it, whether
  the work has started (from then on every exception is a runtime failure, exit
  1), what was cleaned up, and --verbose."""

  def __init__(self):
    self.output: Optional[str] = None
    self.flag = "--output"
    self.running = False
    self.cleanup_note: Optional[str] = None
    self.verbose = False
    self.captured_log: Optional[str] = None  # what console.held_back kept of stderr


RUN = RunState()


def running(output: str, flag: str = "--output") -> None:
  """Marks the start of a command's work on `output` (named by `flag`)."""
  RUN.output, RUN.flag, RUN.running = output, flag, True


def note_cleanup(note: str) -> None:
  """What the command removed after a failure, for the failure line."""
  RUN.cleanup_note = note


class UsageError(ValueError):
  """A mistake in the command line or in what it points to: one line naming the flag.

  str(): "--flag VALUE: problem" (or "--flag: problem" without a value).
  """

  def __init__(self, flag: Optional[str], value, problem: str):
    self.flag, self.value, self.problem = flag, value, problem
    head = flag or ""
    if value is not None and value != "":
      head = f"{head} {value}" if head else str(value)
    super().__init__(f"{head}: {problem}" if head else problem)


def floats(text: str):
  """argparse type of a comma-separated list of numbers, e.g. --scales 3,6,12."""
  return tuple(float(v) for v in text.split(","))


def one_line(text) -> str:
  """`text` with every run of whitespace (newlines included) as one space."""
  return " ".join(str(text).split())


def error_line(prog: str, error) -> str:
  return f"{prog}: error: {one_line(error)}"


def fail(prog: str, error) -> int:
  """Prints the one error line on stderr; returns the exit code, 2."""
  print(error_line(prog, error), file=sys.stderr, flush=True)
  return EXIT_USAGE


def closest(flag: str, known: Iterable[str]) -> Optional[str]:
  """The known flag nearest to `flag` (a typo, '-' for '_', a lost letter), or None."""
  def normal(name: str) -> str:
    return "--" + name.split("=", 1)[0].lstrip("-").replace("-", "_").lower()
  normalised = {normal(k): k for k in sorted(set(known))}
  key = normal(flag)
  if key in normalised:
    return normalised[key]
  matches = difflib.get_close_matches(key, list(normalised), n=1, cutoff=0.6)
  return normalised[matches[0]] if matches else None


def unknown_flag_error(arg: str, known: Iterable[str]) -> UsageError:
  name = arg.split("=", 1)[0]
  if not name.startswith("-"):
    return UsageError(None, None, f"unexpected argument {arg!r} (flags take the form "
                      f"--name VALUE)")
  suggestion = closest(name, known)
  hint = f"; did you mean {suggestion}?" if suggestion else "; see --help"
  return UsageError(name, None, f"no such flag{hint}")


def list_text(values: Sequence) -> str:
  """A list value as a flag takes it: (3.0, 6.0, 12.0) -> "3,6,12"."""
  return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def show_default(value) -> Optional[str]:
  """A flag's default as --help shows it (a list as list_text writes it),
  None for no default worth showing (None, False, an empty list)."""
  if value is None or value is False or value == argparse.SUPPRESS or value == ():
    return None
  if isinstance(value, (tuple, list)):
    return list_text(value)
  if value == "":
    return "''"
  return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Every flag's help ends with its default (show_default), unless it has
  none or the help already gives it; description and examples are printed as
  written."""

  def _get_help_string(self, action):
    text = action.help or ""
    shown = show_default(action.default)
    if not action.option_strings or shown is None or "default" in text:
      return text
    return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage block) and exit 2.

  parse() is parse_args() that also names the closest valid flag for an
  unknown one; parse_with_beam() keeps the arguments that Beam's
  PipelineOptions knows and refuses the rest the same way. Every parser has
  --version and (unless verbose_flag=False: a command without failure.log)
  --verbose; `examples` (command lines) end its --help.
  """

  def __init__(self, *args, examples: Sequence[str] = (), verbose_flag: bool = True,
               **kwargs):
    from pipeline import __version__
    kwargs.setdefault("formatter_class", HelpFormatter)
    if examples:
      kwargs["epilog"] = "\n".join(["examples:", *("  " + line for line in examples),
                                    *(["", kwargs["epilog"]] if kwargs.get("epilog") else [])])
    super().__init__(*args, **kwargs)
    if verbose_flag:
      self.add_argument("--verbose", action="store_true",
                        help="on a failure while running, print the full traceback too (it "
                             "always goes to failure.log in the output directory)")
    self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                      help="print the version and exit")

  def parse_known_args(self, args=None, namespace=None):
    parsed, rest = super().parse_known_args(args, namespace)
    RUN.verbose = bool(getattr(parsed, "verbose", False))
    return parsed, rest

  def error(self, message):  # argparse's own errors: missing, invalid or unknown
    self.exit(EXIT_USAGE, error_line(self.prog, message) + "\n")

  def flags(self) -> List[str]:
    return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

  def parse(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args, unknown = self.parse_known_args(argv)
    if unknown:
      self.error(str(unknown_flag_error(unknown[0], self.flags())))
    return args

  def parse_with_beam(self, argv: Optional[Sequence[str]] = None
                      ) -> Tuple[argparse.Namespace, List[str]]:
    """(own arguments, Beam's arguments); an argument neither knows is an error."""
    args, rest = self.parse_known_args(argv)
    beam_flags, unknown = beam_unknown_args(rest)
    if unknown:
      self.error(str(unknown_flag_error(unknown[0], self.flags() + beam_flags)))
    return args, rest


def beam_unknown_args(args: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(every flag Beam's PipelineOptions define, the arguments of `args` none of
  them parses): what PipelineOptions would log as "Discarding unparseable args"
  and drop. Built the way PipelineOptions.get_all_options builds its parser."""
  from apache_beam.options import pipeline_options  # lazy: a second's import

  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  seen = {}
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    seen.setdefault(str(cls), cls)
  for cls in seen.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(list(args))
  flags = [s for action in parser._actions for s in action.option_strings  # pylint: disable=protected-access
           if s.startswith("--")]
  return flags, [a for a in unknown if a != "--"]


# What TensorFlow's native code prints while it is imported: a note that absl
# logging is not set up yet, oneDNN's and the CPU feature guard's notices.
TENSORFLOW_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
    r"I\d{4} [^\]]*\] (oneDNN custom operations|This TensorFlow binary is optimized)|"
    r"To enable the following instructions:)")


@contextlib.contextmanager
def quiet_native_stderr(noise: "re.Pattern[str]" = TENSORFLOW_IMPORT_NOISE):
  """Holds back what is written to file descriptor 2 (native code included)
  inside the block, then writes it out less the lines matching `noise`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
      kept = "".join(line for line in lines if not noise.match(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow without its start-up notices on stderr (anything else
  it prints still shows)."""
  if "tensorflow" in sys.modules:
    return
  with quiet_native_stderr():
    import tensorflow  # noqa: F401


def setup_logging(level: int = logging.WARNING) -> None:
  """The commands' logging: WARNING and up, timestamped (replacing the handler
  that a library's logging.warning() at import may have set up), without the
  import-time noise that pipeline/__init__.py filters out."""
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)


def run_command(prog: str, command: Callable[[], int],
                errors: Tuple[type, ...] = (ValueError, FileNotFoundError)) -> int:
  """Runs `command` (a main body returning an exit code). A UsageError, or one
  of `errors` (the command's own: bad flags or data), is its one error line and
  exit code 2; found after the work started (running()), its traceback also
  goes to failure.log. Any other exception is a runtime failure: one line
  saying what, where and what to do, the traceback in failure.log (and on
  stderr with --verbose), exit code 1."""
  RUN.output, RUN.flag, RUN.running, RUN.cleanup_note = None, "--output", False, None
  RUN.captured_log = None
  try:
    return command()
  except UsageError as e:
    return fail(prog, e)
  except errors as e:
    if not RUN.running:
      return fail(prog, e)
    # Found while running (a corrupt shard or record, say): the data is what is
    # wrong, as before the start: its own one-line message, exit 2, and the log.
    return _end_after(prog, runtime_failure(prog, e, own_message=True))
  except Exception as e:  # noqa: BLE001 - every runtime failure gets its one line
    return _end_after(prog, runtime_failure(prog, e))
  finally:
    if RUN.captured_log:
      with contextlib.suppress(OSError):
        os.remove(RUN.captured_log)
      RUN.captured_log = None


def _end_after(prog: str, code: int) -> int:
  """Ends the console script `prog` at once after a runtime failure, with
  `code`: what the failed run leaves behind (an HDF5 file half written on a
  full disk, Beam's threads) can crash the interpreter's teardown, turning
  exit code 1 into a segmentation fault. Called from Python (tests), returns."""
  if os.path.basename(sys.argv[0] if sys.argv else "") != prog:
    return code
  if RUN.captured_log:
    with contextlib.suppress(OSError):
      os.remove(RUN.captured_log)
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def runtime_failure(prog: str, error: BaseException, own_message: bool = False) -> int:
  """Prints the one line of a failure while running; returns its exit code: 2
  for an error of the command's own kinds (`own_message`: its message is the
  line), else 1 (failures.describe's line)."""
  import traceback

  from pipeline.commands import failures  # stdlib only, like this module
  line = one_line(error) if own_message else failures.describe(error, RUN.flag, RUN.output)
  if RUN.cleanup_note:
    line += f"; {RUN.cleanup_note}"
  formatted = "".join(traceback.format_exception(error))
  if RUN.verbose:
    sys.stderr.write(formatted)
  unraisable: list = []
  failures.release(error, unraisable)  # open files of the failed run: closed, space freed
  log = failures.write_log(RUN.output, prog, error, captured=RUN.captured_log,
                           formatted=formatted + "".join(unraisable))
  where = f" (traceback: {log})" if log else ""
  print(error_line(prog, line + where), file=sys.stderr, flush=True)
  return EXIT_USAGE if own_message else EXIT_FAILURE
