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


def bf16_hardware(device: str) -> str | None:
    """What runs bfloat16 matrix products natively on ``device`` (AMX, avx512_bf16, a CUDA GPU with
    bf16), or None where torch would emulate them (several times slower than float32 on an AVX2 CPU)."""
    import torch

    kind = str(device).strip().split(":")[0]
    if kind in ("cuda", "auto"):
        return "cuda bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if kind != "cpu":
        return None
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


def check_study_dtype(study_dtype: str, device: str, remote: bool = False) -> None:
    """``--study-dtype bfloat16`` only where the hardware runs bfloat16 natively, and on a local model."""
    if study_dtype == "float32":
        return
    if remote:
        raise ConfigError(
            f"--study-dtype {study_dtype} applies to a model run here, not on NDIF (--remote): drop one"
        )
    if bf16_hardware(device) is None:
        import torch

        what = (
            f"no AMX or avx512_bf16; torch reports {torch.backends.cpu.get_cpu_capability()}"
            if str(device).strip().startswith("cpu")
            else "no GPU with bfloat16"
        )
        raise ConfigError(
            f"--study-dtype {study_dtype}: device {device} has no native bfloat16 matrix products ({what}), "
            "so they would run slower than float32; use --study-dtype float32"
        )
