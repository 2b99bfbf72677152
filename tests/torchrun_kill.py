"""`scircuits` as torchrun's script, one of whose ranks kills itself (SIGKILL) before a given
training step: SCIRCUITS_TEST_KILL="RANK:STEP" (tests/test_multinode.py)."""

from __future__ import annotations

import os
import signal
import sys

import scircuits.platform.train.training as training
from scircuits.cli import main

rank, step = (int(part) for part in os.environ["SCIRCUITS_TEST_KILL"].split(":"))
real_step = training.SAETrainer.train_step


def train_step(self: training.SAETrainer, x):  # type: ignore[no-untyped-def]
    if self.step + 1 == step and int(os.environ["RANK"]) == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, x)


training.SAETrainer.train_step = train_step  # type: ignore[method-assign]
main(sys.argv[1:])
