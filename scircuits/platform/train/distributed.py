"""torch.distributed plumbing for SAE training, and spreading independent jobs over devices.

- ``DistContext``: this process's rank and world size (``world_size == 1``: not distributed).
- ``from_environment``: the context torchrun (or our own launcher) set in RANK / WORLD_SIZE /
  LOCAL_RANK / MASTER_ADDR / MASTER_PORT, initialising the process group (gloo on CPU, NCCL on GPU).
- ``launch``: run ``fn(*args)`` in ``nproc`` spawned processes with that environment. Each worker dies
  with its launcher (a parent-death signal on Linux, else a watchdog on the parent's pid) and holds
  the output folder's group lock while it lives, so a killed launcher leaves no worker writing and
  no new writer is let in beside one.
- ``from_rank_zero`` / ``agree`` / ``broadcast_tensors``: what one rank decides or reads, shared
  with the others (under torchrun rank 0 alone claims, locks and writes; the others learn its
  outcome, so a refusal is printed once).
- ``lost_peer``: an error of a collective whose other side is gone (a rank or node died).
- ``run_jobs_on_devices``: independent jobs (one SAE each), one at a time per device.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing.process
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits.platform.common.artifacts import hold_for_group
from scircuits.platform.common.device import check_device
from scircuits.platform.contract.errors import ConfigError, DataFormatError, ScircuitsError

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self, *, barrier: bool = True) -> None:
        """Leave the process group. ``barrier=False`` after a failure: the other ranks may be gone or
        waiting in another collective, and a barrier would then fail or wait for them."""
        if self.initialized_here:
            import torch.distributed as dist

            if dist.is_initialized():
                # every rank arrives before any tears its connections down: a rank that destroys the
                # group while another still talks to it aborts that one ("terminate called ...")
                if barrier:
                    dist.barrier()
                dist.destroy_process_group()
            self.initialized_here = False


class RankError(ScircuitsError):
    """A failure of a distributed run. ``quiet``: another rank prints the same line (the CLI prints
    nothing for this rank, and exits 2)."""

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.reported_elsewhere = quiet


class LostRankError(RankError):
    """A collective failed because another rank (or its node) is gone."""


def under_launcher() -> bool:
    """True when torchrun (or ``launch``) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` -> ``cuda:<local_rank>``; a list ``cuda:0,cuda:1`` -> its local_rank-th entry."""
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if len(devices) > 1:
        return devices[local_rank % len(devices)]
    one = devices[0] if devices else "cpu"
    if one == "cuda":
        return f"cuda:{local_rank}"
    return one


_JOINED: list[bool] = []  # set once this process has joined a process group


def joined_a_group() -> bool:
    """True once this process has joined the ranks' process group (even if it has left it since)."""
    return bool(_JOINED)


def from_environment(device: str) -> DistContext:
    if not under_launcher():
        return DistContext(device=rank_device(device, 0))
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    this_device = rank_device(device, local_rank)
    # without CUDA the group still starts (gloo), so that the device check refuses on every rank at once
    cuda = this_device.startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(torch.device(this_device))
    created = False
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankError(
                f"rank {rank} of {world}: torch.distributed could not start ({first}); check that every "
                "node was started with the same --nnodes, --master-addr and --master-port"
            ) from None
        created = True
        _JOINED.append(True)
    return DistContext(
        rank=rank, world_size=world, local_rank=local_rank, device=this_device, initialized_here=created
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends: SIGKILL from the kernel on Linux, else a watchdog thread."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _spawned(
    local_rank: int,
    world: int,
    port: int,
    threads: int,
    fn: Callable[..., Any],
    args: tuple,
    parent: int,
    hold: str | None,
) -> None:
    _die_with_parent(parent)
    if hold is not None:
        hold_for_group(Path(hold))
    os.environ.update(
        {
            "RANK": str(local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import torch

    torch.set_num_threads(threads)
    fn(*args)
    # Skip the interpreter's teardown: gloo's threads, torn down there, abort a finished rank now and
    # then ("terminate called without an active exception") after all of its work is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# the exit code of a spawned process that found itself started while re-importing the caller's script
# (a script without ``if __name__ == "__main__":``): it stops at once, quietly, and its parent says why
BOOTSTRAP_EXIT = 86
BOOTSTRAP_TEXT = "before the current process has finished its bootstrapping phase"


def unguarded_script_error() -> ConfigError:
    return ConfigError(
        "the script that called scircuits starts worker processes (nproc > 1 or several devices), and "
        'each re-imports it: guard the script\'s entry with `if __name__ == "__main__":` (docs/api.md)'
    )


def stop_if_bootstrapping() -> None:
    """In a spawned process that is still importing the parent's main script (whose unguarded call to
    scircuits is running again here), exit quietly with BOOTSTRAP_EXIT instead of multiprocessing's
    RuntimeError traceback; the parent turns that code into ``unguarded_script_error``."""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(BOOTSTRAP_EXIT)


def launch(nproc: int, fn: Callable[..., Any], *args: Any, hold: Path | None = None) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine (spawn), as ranks 0..nproc-1.

    ``fn`` must be importable (a module-level function). Raises ScircuitsError if a rank fails. The
    workers die with this process; with ``hold`` each holds that folder's group lock while it lives.
    """
    import torch.multiprocessing as mp

    stop_if_bootstrapping()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    try:
        context = mp.start_processes(
            _spawned,
            args=(nproc, free_port(), threads, fn, args, os.getpid(), None if hold is None else str(hold)),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join():
                pass
        except KeyboardInterrupt:  # Ctrl-C or SIGINT to this process alone: the workers stop too
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(timeout=30)
            raise
    except mp.ProcessRaisedException as exc:
        if BOOTSTRAP_TEXT in str(exc):
            raise unguarded_script_error() from None
        user = worker_user_error(str(exc))
        if user is not None:  # a refusal of the worker's input: its one line, as in one process
            raise user from None
        raise ScircuitsError(f"distributed training failed in a worker process:\n{exc}") from None
    except mp.ProcessExitedException as exc:
        if getattr(exc, "exit_code", None) == BOOTSTRAP_EXIT:
            raise unguarded_script_error() from None
        raise ScircuitsError(f"a distributed training process died: {exc}") from None


def worker_user_error(text: str) -> ScircuitsError | None:
    """The user error a worker raised (a ConfigError or DataFormatError of scircuits, read from the
    last line of its traceback), as one of this process; None for anything else."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = re.match(r"^(scircuits(?:\.\w+)*)\.(\w+): (.+)$", lines[-1]) if lines else None
    if match is None:
        return None
    try:
        cls = getattr(importlib.import_module(match.group(1)), match.group(2))
    except (ImportError, AttributeError):
        return None
    for kind in (ConfigError, DataFormatError):
        if isinstance(cls, type) and issubclass(cls, kind):
            return kind(match.group(3))
    return None


def all_reduce_(tensor: Any, op: str = "sum") -> Any:
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(tensor, op=ops[op])
    return tensor


# -- sharing what one rank decides --------------------------------------------------------------


def _one_line(message: str) -> str:
    return " ".join(message.split())


def from_rank_zero(dist: DistContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 alone; its value (or its refusal) on every rank. A ScircuitsError of
    rank 0 is raised there as it is and on the others as a quiet RankError (printed once)."""
    if not dist.enabled:
        return fn()
    import torch.distributed as tdist

    box: list[Any] = [None]
    if dist.is_main:
        try:
            value = fn()
        except ScircuitsError as exc:
            box[0] = ("error", str(exc))
            tdist.broadcast_object_list(box, src=0)
            raise
        box[0] = ("ok", value)
    tdist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise RankError(value, quiet=True)
    return value


def agree(dist: DistContext, fn: Callable[[], Any]) -> list[Any]:
    """``fn()`` run on every rank (each checks what it was given and what it can read); the values
    of all ranks, in rank order. When any rank's ``fn`` raised a ScircuitsError, every rank raises:
    rank 0 with one line naming the first failing rank, the others quietly."""
    if not dist.enabled:
        return [fn()]
    import torch.distributed as tdist

    try:
        mine: tuple[str, Any] = ("ok", fn())
    except ScircuitsError as exc:
        mine = ("error", str(exc))
    found: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(found, mine)
    failed = [(rank, value) for rank, (status, value) in enumerate(found) if status == "error"]
    if failed:
        rank, message = failed[0]
        where = "" if rank == 0 else f"rank {rank} of {dist.world_size}: "
        raise RankError(_one_line(where + message), quiet=not dist.is_main)
    return [value for _, value in found]


def broadcast_tensors(dist: DistContext, tensors: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's ``tensors`` (name -> CPU tensor) on every rank, as CPU tensors; the other ranks pass
    None. Sent one tensor at a time (on the rank's device under NCCL), never pickled whole."""
    if not dist.enabled:
        return dict(tensors or {})
    import torch
    import torch.distributed as tdist

    index: list[Any] = [None]
    if dist.is_main:
        assert tensors is not None
        index[0] = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    tdist.broadcast_object_list(index, src=0)
    device = torch.device(dist.device) if dist.device.startswith("cuda") else torch.device("cpu")
    received: dict[str, Any] = {}
    for name, shape, dtype in index[0]:
        if dist.is_main:
            assert tensors is not None
            buffer = tensors[name].detach().to(device).contiguous()
        else:
            buffer = torch.empty(shape, dtype=dtype, device=device)
        tdist.broadcast(buffer, src=0)
        received[name] = buffer.cpu()
    return received


def gather_objects(dist: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not dist.enabled:
        return [value]
    import torch.distributed as tdist

    found: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(found, value)
    return found


def sum_over_ranks(dist: DistContext, array: Any) -> Any:
    """The element-wise sum of every rank's numpy ``array`` (same shape and dtype on each)."""
    if not dist.enabled:
        return array
    import torch

    device = dist.device if dist.device.startswith("cuda") else "cpu"
    tensor = torch.from_numpy(array).to(device)
    all_reduce_(tensor)
    return tensor.cpu().numpy()


LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "gloo/transport", "NCCL")


def lost_peer(exc: BaseException) -> bool:
    """True for the error a collective raises when another rank is gone (or the link to it broke)."""
    import torch.distributed as tdist

    if isinstance(exc, getattr(tdist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in LOST_PEER_MARKERS)


def lost_rank_error(dist: DistContext, exc: BaseException, what: str) -> LostRankError:
    """One line for a rank whose collective failed; only the first rank of each node prints it."""
    first = _one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    first = first.split("] ", 1)[-1].split(". ", 1)[0][:200]  # gloo's source location and advice cut
    return LostRankError(
        f"rank {dist.rank} of {dist.world_size} lost the other ranks ({first}): a rank or its node died "
        f"or the network dropped; {what}",
        quiet=dist.local_rank != 0,
    )


# -- independent jobs over devices --------------------------------------------------------------


def parse_devices(device: str) -> list[str]:
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if not devices:
        raise ConfigError("--device: give at least one device (cpu, cuda, cuda:0, cuda:0,cuda:1, ...)")
    check_device(",".join(devices))  # every device, before the first job starts (not as each job starts)
    return devices


def _job_process(fn: Callable[[Any, str], Any], job: Any, device: str, results: Any, index: int) -> None:
    try:
        results.put((index, "ok", str(fn(job, device))))
    except BaseException as exc:
        results.put((index, "error", f"{type(exc).__name__}: {exc}"))


def run_jobs_on_devices(
    jobs: Sequence[Any],
    devices: Sequence[str],
    fn: Callable[[Any, str], Any],
    threads_per_job: int | None = None,
) -> list[str]:
    """Run ``fn(job, device)`` for every job, each in its own spawned process, at most one job per
    device at a time (a device may be listed twice to run two jobs on it). Jobs start in order as
    devices free up. Returns ``str(fn(...))`` per job, in job order; raises ScircuitsError naming
    every failed job after all have finished.
    """
    import multiprocessing as mp

    stop_if_bootstrapping()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pending: queue.Queue[int] = queue.Queue()
    for i in range(len(jobs)):
        pending.put(i)
    outcomes: dict[int, tuple[str, str]] = {}
    lock = threading.Lock()

    def worker(device: str) -> None:
        while True:
            try:
                index = pending.get_nowait()
            except queue.Empty:
                return
            process = ctx.Process(target=_job_process, args=(fn, jobs[index], device, results, index))
            process.start()
            process.join()
            if process.exitcode == BOOTSTRAP_EXIT:
                with lock:
                    outcomes[index] = ("bootstrap", "")
            elif process.exitcode != 0:
                with lock:
                    outcomes.setdefault(index, ("error", f"process exited with code {process.exitcode}"))

    threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while len(outcomes) < len(jobs):
        try:
            index, status, message = results.get(timeout=5)
        except queue.Empty:
            break
        outcomes[index] = (status, message)
    if any(status == "bootstrap" or BOOTSTRAP_TEXT in message for status, message in outcomes.values()):
        raise unguarded_script_error()
    failed = [
        f"job {i} ({_job_name(jobs[i])}): {outcomes.get(i, ('error', 'no result'))[1]}"
        for i in range(len(jobs))
        if outcomes.get(i, ("error", ""))[0] != "ok"
    ]
    if failed:
        raise ScircuitsError(f"{len(failed)} of {len(jobs)} training jobs failed: " + "; ".join(failed))
    return [outcomes[i][1] for i in range(len(jobs))]


def _job_name(job: Any) -> str:
    """A job by its store and output folder (never its whole config)."""
    if isinstance(job, dict) and "out" in job:
        return f"store {job.get('store')} -> {job['out']}"
    return str(getattr(job, "out", "?"))
