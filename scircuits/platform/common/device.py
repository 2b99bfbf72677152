"""Checking a ``--device`` value before any work: a one-line error instead of a torch traceback."""

from __future__ import annotations

from scircuits.platform.contract.errors import ConfigError

KNOWN = ("cpu", "cuda", "mps")


def check_device(device: str) -> None:
    """Each comma-separated device must be cpu, cuda[:N] or mps, and present on this machine."""
    import torch

    for one in (d.strip() for d in str(device).split(",")):
        kind, _, index = one.partition(":")
        if kind not in KNOWN or (index and not index.isdigit()):
            raise ConfigError(f"--device {one}: unknown device; use cpu, cuda, cuda:N or mps")
        if kind == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(
                    f"--device {one}: this machine has no CUDA GPU (torch sees none); use --device cpu"
                )
            if index and int(index) >= count:
                raise ConfigError(
                    f"--device {one}: this machine has {count} CUDA GPU(s); use cuda:0..{count - 1}"
                )
        if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {one}: MPS is not available on this machine; use --device cpu")
