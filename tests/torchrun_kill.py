"""`scircuits` as torchrun's script, one of whose ranks kills itself (SIGKILL) before a given
training step (SCIRCUITS_TEST_KILL="RANK:STEP"), or when it first waits at a barrier, after its
last step ("RANK:end") (tests/test_multinode.py)."""

from __future__ import annotations

import os
import signal
import sys

import torch.distributed

import scircuits.platform.train.training as training
from scircuits.cli import main

rank, when = os.environ["SCIRCUITS_TEST_KILL"].split(":")
mine = int(os.environ["RANK"]) == int(rank)
real_step, real_barrier = training.SAETrainer.train_step, torch.distributed.barrier


def train_step(self: training.SAETrainer, x):  # type: ignore[no-untyped-def]
    if mine and when != "end" and self.step + 1 == int(when):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, x)


def barrier(*args, **kwargs):  # type: ignore[no-untyped-def]
    if mine and when == "end":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_barrier(*args, **kwargs)


training.SAETrainer.train_step = train_step  # type: ignore[method-assign]
torch.distributed.barrier = barrier
main(sys.argv[1:])
