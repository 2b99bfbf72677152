"""The memory an SAE's training needs, checked before any work: an absurd --expansion is one line
at once, not an allocation failure after the collection."""

from __future__ import annotations

import os

from scircuits.platform.contract.errors import ConfigError

# float32 weights, their gradients and Adam's two moments
BYTES_PER_PARAMETER = 4 * 4
# the batch's latent codes and their gradients (pre-activations, codes, grads)
BYTES_PER_CODE = 4 * 3


def training_bytes(d_model: int, d_sae: int, batch_size: int) -> int:
    """Bytes an SAE's training holds at once: parameters with optimizer state, one batch's codes."""
    parameters = 2 * d_model * d_sae + d_sae + d_model
    return parameters * BYTES_PER_PARAMETER + batch_size * d_sae * BYTES_PER_CODE


def machine_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_sae_memory(d_model: int, expansion: int, batch_size: int, device: str = "cpu") -> None:
    """ConfigError when training an SAE of ``expansion`` x ``d_model`` latents needs more memory than
    the device has (this machine's RAM; a GPU's own memory for cuda)."""
    d_sae = expansion * d_model
    need = training_bytes(d_model, d_sae, batch_size)
    have, where = machine_bytes(), "this machine's memory"
    first = device.split(",")[0].strip()
    if first.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(first.partition(":")[2] or 0)
            have, where = torch.cuda.get_device_properties(index).total_memory, f"{first}'s memory"
    if have is not None and need > have:
        raise ConfigError(
            f"--expansion {expansion}: an SAE of {d_sae:,} latents on width {d_model} needs about "
            f"{need / 2**30:.1f} GiB to train, more than {where} ({have / 2**30:.1f} GiB); give a smaller "
            "--expansion (or --batch-size)"
        )
