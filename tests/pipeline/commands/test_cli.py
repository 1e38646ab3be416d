"""pipeline.commands.cli: one-line errors, the closest flag, Beam's flags, quiet TF start-up."""
import os

import pytest

from pipeline.commands import cli


def _parser():
  parser = cli.Parser(prog="tool", allow_abbrev=False)
  parser.add_argument("--tile_dtype", choices=("float32", "float16"), default="float32")
  parser.add_argument("--output", required=True)
  return parser


@pytest.mark.parametrize("typo,expected", [
    ("--tile-dtype", "--tile_dtype"), ("--TILE_DTYPE", "--tile_dtype"),
    ("--tile_dtyp", "--tile_dtype"), ("--ouptut", "--output"), ("--output=x", "--output"),
    ("--zzz", None)])
def test_closest(typo, expected):
  assert cli.closest(typo, ["--tile_dtype", "--output", "--runner"]) == expected


def test_usage_error_text():
  assert str(cli.UsageError("--split", "DET/x", "no such split")) == "--split DET/x: no such split"
  assert str(cli.UsageError("--data", None, "required")) == "--data: required"
  assert str(cli.UsageError(None, None, "give one")) == "give one"


def test_parser_errors_are_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _parser().parse(["--output", "o", "--tile-dtype", "float16"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err == "tool: error: --tile-dtype: no such flag; did you mean --tile_dtype?\n"
  with pytest.raises(SystemExit):
    _parser().parse(["--tile_dtype", "float64"])  # two problems: argparse names the first
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("tool: error: argument --tile_dtype")


def test_parse_with_beam_keeps_beam_flags_and_refuses_the_rest(capsys):
  args, beam = _parser().parse_with_beam(["--output", "o", "--runner", "DirectRunner",
                                          "--direct_num_workers=2", "--project", "p"])
  assert args.output == "o" and beam == ["--runner", "DirectRunner", "--direct_num_workers=2",
                                         "--project", "p"]
  with pytest.raises(SystemExit):
    _parser().parse_with_beam(["--output", "o", "--runer", "DirectRunner"])
  assert capsys.readouterr().err == "tool: error: --runer: no such flag; did you mean --runner?\n"
  with pytest.raises(SystemExit):
    _parser().parse_with_beam(["--output", "o", "stray"])
  assert "unexpected argument 'stray'" in capsys.readouterr().err


def test_beam_unknown_args():
  flags, unknown = cli.beam_unknown_args(["--runner", "X", "--layuot", "maps", "--job_name=j"])
  assert unknown == ["--layuot", "maps"]
  assert "--runner" in flags and "--temp_location" in flags


def test_run_command_turns_errors_into_one_line(capsys):
  def broken():
    raise ValueError("first line\nsecond line")
  assert cli.run_command("tool", broken) == 2
  assert capsys.readouterr().err == "tool: error: first line second line\n"
  assert cli.run_command("tool", lambda: 0) == 0

  def bug():  # any other exception: one line, exit 1, the traceback in the log
    raise KeyError("a bug")
  assert cli.run_command("tool", bug) == 1
  line = capsys.readouterr().err
  assert line.startswith("tool: error: KeyError: 'a bug' (traceback: ")
  log = line.split("(traceback: ")[1].strip().rstrip(")")
  try:
    with open(log) as f:
      assert 'raise KeyError("a bug")' in f.read()
  finally:
    os.remove(log)


def test_quiet_native_stderr_drops_only_the_noise(capfd):
  with cli.quiet_native_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                b"written to STDERR\n")
    os.write(2, b"I0000 00:00:1796533511.345641    6020 port.cc:153] oneDNN custom operations "
                b"are on.\n")
    os.write(2, b"a real problem\n")
  assert capfd.readouterr().err == "a real problem\n"


def test_quiet_native_stderr_restores_on_error(capfd):
  with pytest.raises(ImportError), cli.quiet_native_stderr():
    os.write(2, b"why the import failed\n")
    raise ImportError("no module")
  os.write(2, b"after\n")
  assert capfd.readouterr().err == "why the import failed\nafter\n"
