"""rpn-preprocess and the modules it shares with the trainer."""
import logging

# The package's version: setup.py reads it from here; every command's --version prints it.
__version__ = "0.8.0"


class _DropImportNoise(logging.Filter):
  """Drops what a library logs at import that says nothing about this run, so a
  command's error stays the one line on stderr (pipeline.commands.cli). Beam without
  its gcp extra logs the first on every import."""
  NOISE = ("apitools not found",)

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOISE)


if not any(isinstance(f, _DropImportNoise) for f in logging.getLogger().filters):
  logging.getLogger().addFilter(_DropImportNoise())
