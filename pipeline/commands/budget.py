"""The failure budget of the commands that read many inputs (--max_failed_fraction).

rpn-preprocess, rpn-anchors and rpn-propose go on past a bad image: it is
listed in errors.jsonl and the others are processed. A scheduler (Airflow,
Argo, cron) sees only the exit code, so a run that lost too much must say so
there. After the outputs and errors are written, a run ends with exit code 1
and one line on stderr when

  - no input produced output (every one failed, or was skipped), or
  - the failed share of the inputs it tried is above --max_failed_fraction F:
    failed / (ok + failed). Images skipped by policy (no XML with
    --missing_annotations skip) are not failures and are not counted.

    rpn-preprocess: error: 3 of 4 images failed (75%), more than
    --max_failed_fraction 0.5; the outputs were written, each failed or skipped
    one with its reason in out/errors.jsonl

F = 1.0 (the default) fails only the run in which nothing produced output.
Stdlib only, like the commands' front ends.
"""
from __future__ import annotations

import argparse
import sys
from typing import Mapping, Optional

from pipeline.commands import cli

FLAG = "--max_failed_fraction"
DEFAULT = 1.0


def add_argument(parser: argparse.ArgumentParser, what: str = "images") -> None:
  parser.add_argument(
      FLAG, type=float, default=DEFAULT, metavar="F",
      help=f"exit 1 (after writing the outputs) when more than this share of the {what} "
      f"tried failed (skipped ones do not count), or when none produced output; "
      f"1.0: only the latter")


def check_flag(value: float) -> None:
  """UsageError unless 0 <= value <= 1."""
  if not 0.0 <= value <= 1.0:
    raise cli.UsageError(FLAG, value, "must be in [0, 1]")


def problem(counts: Mapping[str, int], max_failed_fraction: float,
            what: str = "images") -> Optional[str]:
  """Why a run with these counts (images_ok, images_failed; images_skipped
  optional) is over its budget, or None."""
  ok, failed = int(counts["images_ok"]), int(counts["images_failed"])
  skipped = int(counts.get("images_skipped", 0))
  tried = ok + failed
  if ok == 0:
    parts = [f"{failed} failed"] + ([f"{skipped} skipped"] if skipped else [])
    return f"no {what} produced output ({', '.join(parts)} of {tried + skipped})"
  if failed / tried > max_failed_fraction:
    return (f"{failed} of {tried} {what} failed ({100.0 * failed / tried:.0f}%), more than "
            f"{FLAG} {max_failed_fraction:g}")
  return None


def exit_code(prog: str, counts: Mapping[str, int], max_failed_fraction: float,
              errors_path: str, what: str = "images") -> int:
  """0 within the budget; else 1, after one line on stderr saying how many
  failed and where the list is."""
  why = problem(counts, max_failed_fraction, what)
  if why is None:
    return 0
  print(cli.error_line(prog, f"{why}; the outputs were written, each failed or skipped "
                             f"one with its reason in {errors_path}"), file=sys.stderr, flush=True)
  return cli.EXIT_FAILURE
