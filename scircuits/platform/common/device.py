"""Checking a ``--device`` value before any work: a one-line error instead of a torch traceback."""

from __future__ import annotations

from scircuits.platform.contract.errors import ConfigError

KNOWN = ("cpu", "cuda", "mps")


def check_device(device: str, allow_auto: bool = False) -> None:
    """Each comma-separated device must be cpu, cuda[:N] or mps, and present on this machine;
    ``auto`` (the model split over the visible GPUs) where a model is loaded (``allow_auto``)."""
    import torch

    if str(device).strip() == "auto":
        if not allow_auto:
            raise ConfigError(
                "--device auto splits a model over the GPUs; this command holds no model: use cpu, cuda "
                "or cuda:N"
            )
        if not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
            raise ConfigError(
                "--device auto splits the model over the visible GPUs (device_map='auto'), and torch sees "
                "none on this machine; use --device cpu"
            )
        return
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
