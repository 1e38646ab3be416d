"""pipeline/commands/budget.py: when a run's failures make it exit 1."""
import pytest

from pipeline.commands import budget, cli


def _counts(ok, failed, skipped=0):
  return {"images_found": ok + failed + skipped, "images_ok": ok, "images_failed": failed,
          "images_skipped": skipped}


@pytest.mark.parametrize("counts,fraction,expected", [
    (_counts(4, 0), 0.0, None),  # nothing failed: within any budget
    (_counts(3, 1), 1.0, None),  # the default lets failures through
    (_counts(3, 1), 0.25, None),  # 25 % is not more than 0.25
    (_counts(3, 1), 0.2, "1 of 4 images failed (25%), more than --max_failed_fraction 0.2"),
    # Skipped images are neither failures nor counted: 1 of 2 tried failed.
    (_counts(1, 1, skipped=8), 0.4, "1 of 2 images failed (50%), more than "
                                    "--max_failed_fraction 0.4"),
    (_counts(1, 1, skipped=8), 0.5, None),
    # No output at all fails any budget, the default included.
    (_counts(0, 3), 1.0, "no images produced output (3 failed of 3)"),
    (_counts(0, 2, skipped=1), 1.0, "no images produced output (2 failed, 1 skipped of 3)"),
    (_counts(0, 0, skipped=2), 1.0, "no images produced output (0 failed, 2 skipped of 2)"),
])
def test_problem(counts, fraction, expected):
  assert budget.problem(counts, fraction) == expected


def test_counts_without_skipped_images():  # rpn-propose's counts have no images_skipped
  assert budget.problem({"images_ok": 0, "images_failed": 2}, 1.0) == \
      "no images produced output (2 failed of 2)"


def test_exit_code_prints_one_line_only_when_over(capsys):
  assert budget.exit_code("rpn-x", _counts(3, 1), 1.0, "out/errors.jsonl") == 0
  assert capsys.readouterr().err == ""
  assert budget.exit_code("rpn-x", _counts(1, 3), 0.5, "out/errors.jsonl") == cli.EXIT_FAILURE
  err = capsys.readouterr().err
  assert err == ("rpn-x: error: 3 of 4 images failed (75%), more than --max_failed_fraction "
                 "0.5; the outputs were written, each failed or skipped one with its reason in "
                 "out/errors.jsonl\n")


@pytest.mark.parametrize("value", [-0.01, 1.01])
def test_flag_out_of_range(value):
  with pytest.raises(cli.UsageError, match=r"--max_failed_fraction .*must be in \[0, 1\]"):
    budget.check_flag(value)
  budget.check_flag(0.0)
  budget.check_flag(1.0)
