"""Host-to-device copies that do not stall the host.

A plain `cpu_tensor.to("cuda")` from pageable memory waits for the device's stream to drain (PyTorch synchronises
after the copy), so every random draw made on the CPU generator (kept there for bit-identical resumes) would be a
host sync inside the training iteration. Copying through pinned memory with `non_blocking=True` queues the copy
instead; PyTorch keeps the pinned block alive until the copy has run. Values are the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """`tensor` (on the CPU) on `device`; on CUDA through pinned memory without a host sync.

    Args:
        tensor: a CPU tensor; it is not modified.
        device: the target device.

    Returns:
        The tensor on `device` (the input itself when it already lives there).
    """
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
