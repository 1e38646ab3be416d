"""The `rpn-preprocess` modes the pipeline part measures (bench/run.py).

Every mode is the product as it ships, run with its own flags; nothing is
patched. Since `rpn-preprocess` with no runner options picks its own mode
(multi-process, one worker per core, runner-decided shards), every mode but
`plain` states its runner, its workers and its shards, so that it measures
what its name says on any machine; `plain` states none of them, to measure
that default.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

NUM_SHARDS = 16  # the fixed count of the modes that fix one (OutputConfig's)

DIRECT = ("--runner", "DirectRunner")
IN_PROCESS = (*DIRECT, "--direct_running_mode=in_memory", "--direct_num_workers=1")
TWO_PROCESSES = (*DIRECT, "--direct_running_mode=multi_processing", "--direct_num_workers=2")
ONE_TF_THREAD = ("--backbone_threads", "1")
# As many TensorFlow threads as cores in each worker, TensorFlow's own default
# (left out, two worker processes would share the cores' threads).
ALL_CORES_THREADS = ("--backbone_threads", str(os.cpu_count() or 1))
FIXED_SHARDS = ("--num_shards", str(NUM_SHARDS))
RUNNER_SHARDS = ("--num_shards", "0")
SHUFFLE = ("--shuffle_records",)

# `make preprocess` on 2 cores: the Makefile's BEAM_ARGS (multi-process,
# nproc workers), BACKBONE_THREADS 1 and NUM_SHARDS 0.
MAKE_PREPROCESS = "mp_w2_tf1_shards0"
# `rpn-preprocess` with no runner, thread or shard option at all.
PLAIN = "plain"

# name: (runner options, other rpn-preprocess options). Modes run in this
# order; the first one run is the reference whose shards feed the trainer part.
PIPELINE_MODES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "inproc_w1": (IN_PROCESS, FIXED_SHARDS),
    "mp_w2_tf1": (TWO_PROCESSES, ONE_TF_THREAD + FIXED_SHARDS),
    MAKE_PREPROCESS: (TWO_PROCESSES, ONE_TF_THREAD + RUNNER_SHARDS),
    PLAIN: ((), ()),
    "inproc_w1_shuffle": (IN_PROCESS, FIXED_SHARDS + SHUFFLE),
    "mp_w2": (TWO_PROCESSES, ALL_CORES_THREADS + FIXED_SHARDS),
    "inproc_w1_shards0": (IN_PROCESS, RUNNER_SHARDS),
    "mp_w2_tf1_shuffle": (TWO_PROCESSES, ONE_TF_THREAD + FIXED_SHARDS + SHUFFLE),
}
# The modes not listed here run on request (--modes).
DEFAULT_MODES = ("inproc_w1", "mp_w2_tf1", MAKE_PREPROCESS, PLAIN, "inproc_w1_shuffle")
QUICK_MODES = ("inproc_w1", MAKE_PREPROCESS, PLAIN)
