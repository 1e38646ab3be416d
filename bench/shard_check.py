"""The cost of rpn-train's pre-training shard check, default against --verify_shards.

    python -m bench.shard_check --data SHARD_DIR [--repeats 3]

On the shards of SHARD_DIR (local, warm page cache after a first full read):
  sizes     the default: each shard's size against the manifest (a stat each)
  framing   the walk a manifest without shard sizes gets (header seeks), local
  framing (gfile)  the same walk through tf.io.gfile on file:// paths, the
            code path of gs:// (a seek refills GFile's 512 KB buffer)
  verify    --verify_shards: every record's framing and payload checksum
For each: best seconds of --repeats, records/s, and the bytes the process read
from files while checking (Linux /proc/self/io rchar; "-" elsewhere), against
the shards' bytes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional

from pipeline.io import manifest as manifest_lib
from trainer import data as data_lib


def _read_bytes() -> Optional[int]:
  try:
    with open("/proc/self/io") as f:
      return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
  except (OSError, StopIteration):
    return None


def _measure(check: Callable[[], int], repeats: int) -> Dict:
  best, read = None, None
  for _ in range(repeats):
    before, start = _read_bytes(), time.perf_counter()
    records = check()
    seconds = time.perf_counter() - start
    after = _read_bytes()
    if best is None or seconds < best:
      best = seconds
      read = None if before is None or after is None else after - before
  return {"seconds": best, "records": records, "records_per_s": records / best,
          "bytes_read": read}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.shard_check")
  parser.add_argument("--data", required=True)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--result", default=None, help="also write the figures as JSON here")
  args = parser.parse_args(argv)
  manifest = manifest_lib.Manifest.load(args.data)
  paths = manifest.shard_paths(args.data)
  total_bytes = sum(os.path.getsize(p) for p in paths)
  for path in paths:  # warm the page cache: every figure reads from memory
    with open(path, "rb") as f:
      while f.read(16 << 20):
        pass
  without_sizes = dataclasses.replace(manifest, shards=None,
                                      keys=tuple(k for k in manifest.keys if k != "shards"))
  compression = manifest.compression

  def scan_gfile() -> int:
    return sum(data_lib.scan_shard("file://" + os.path.abspath(p), compression)[0]
               for p in paths)

  checks = {
      "sizes (default)": lambda: data_lib.check_shards(args.data, manifest)[1]["records"],
      "framing (old manifest)": lambda: data_lib.check_shards(args.data, without_sizes)[1][
          "records"],
      "framing via tf.io.gfile": scan_gfile,
      "--verify_shards": lambda: data_lib.check_shards(args.data, manifest, verify=True)[1][
          "records"],
  }
  results = {name: _measure(check, args.repeats) for name, check in checks.items()}
  print(f"{args.data}: {len(paths)} shards, {manifest.counts['records']} records, "
        f"{total_bytes / 1e6:.1f} MB ({compression}, {manifest.dtype})")
  print(f"{'check':<26} {'seconds':>9} {'records/s':>12} {'bytes read':>12} {'of shards':>9}")
  for name, r in results.items():
    read = r["bytes_read"]
    share = f"{100 * read / total_bytes:.1f} %" if read is not None else "-"
    print(f"{name:<26} {r['seconds']:>9.4f} {r['records_per_s']:>12,.0f} "
          f"{read if read is not None else '-':>12} {share:>9}")
  if args.result:
    with open(args.result, "w") as f:
      json.dump({"data": args.data, "shards": len(paths), "bytes": total_bytes,
                 "results": results}, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
