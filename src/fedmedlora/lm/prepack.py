"""Linear layers through oneDNN with their weights packed once, for fast greedy decoding on a CPU.

Owns: ``packed_linears`` (a context manager) and ``can_pack``.

Why: a decoding step multiplies a few rows (the batch) by every weight matrix of the model. PyTorch's default CPU
``linear`` calls MKL's ``sgemm``, which re-packs the weight matrix on every call; with 8–32 rows the packing costs
as much as the product (measured on AMD, where MKL is also known to pick slower code paths). oneDNN (MKL-DNN,
shipped in every CPU wheel of PyTorch) can pack a weight once into its blocked layout and reuse it: SmolLM2's
decoder got 1.31–1.34× faster end to end on a 2-core AMD EPYC (``bench/generate_throughput.py --unpacked``,
docs/performance.md). This is the weight-prepacking that ``torch.compile``'s CPU backend does under ``freezing``,
applied without compiling.

The packed copy is made when the block is entered (after ``Session.merged`` folded the adapter in) and dropped when
it is left: it costs one more copy of the linear weights in memory while generating (skipped, decoding unpacked,
when that copy would not fit twice into the memory available), and nothing outside the block changes. Only fp32
``nn.Linear`` layers on the CPU are packed, not PEFT's rank-r ``lora_A``/``lora_B`` factors; any other call
(another dtype, autocast, a GPU tensor, grad enabled) falls through to the layer's own ``forward``. oneDNN sums in
a different order than MKL, so a result can differ in the last bits (~1e-6 relative): greedy answers equal the
unpacked ones except where two tokens' logits tie to that precision (measured in ``bench/generate_throughput.py``).

This is an adapter module: it imports torch. It must not import flwr or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: Rows the packed layout is tuned for (oneDNN accepts any number; this is a hint for its blocking).
_ROWS_HINT = 32


def can_pack() -> bool:
    """Whether this PyTorch build can run linear layers through oneDNN with packed weights."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _packable(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, torch.nn.Linear)
        and type(module).forward is torch.nn.Linear.forward  # not a subclass with its own maths (e.g. quantised)
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and weight.layout == torch.strided
    )


def _is_lora_factor(name: str) -> bool:
    """A PEFT LoRA factor (``lora_A``/``lora_B``): rank-r matrices, unused while merged; nothing to gain."""
    return any(part.startswith("lora_") for part in name.split("."))


def _packed_forward(module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = module.weight.detach()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)
    bias = None if module.bias is None else module.bias.detach()
    plain = type(module).forward.__get__(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled() or x.numel() == 0:
            return plain(x)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")

    return forward


def _fits(nbytes: int) -> bool:
    """Whether a copy of ``nbytes`` leaves at least as much memory available again (a 135M model's copy is 0.5 GB;
    an 8B model's in fp32 is 32 GB, which a CPU machine may not have twice)."""
    import psutil

    return 2 * nbytes <= psutil.virtual_memory().available


@contextmanager
def packed_linears(model: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, every fp32 CPU ``nn.Linear`` of ``model`` runs through oneDNN with its weight packed once.

    Yields the number of layers packed: 0 when disabled, on a GPU, in another dtype, without oneDNN, or when the
    packed copy would not fit twice into the memory available now (then decoding runs unpacked, as before). The
    weights must not change inside the block (the packed copies would not see it); gradients are not supported
    (with grad enabled a layer runs its own ``forward``).
    """
    if not enabled or not can_pack() or not isinstance(model, torch.nn.Module):
        yield 0
        return
    targets = [
        m
        for name, m in model.named_modules()
        if _packable(m) and not _is_lora_factor(name) and "forward" not in m.__dict__
    ]
    if not targets or not _fits(sum(m.weight.numel() * m.weight.element_size() for m in targets)):
        yield 0
        return
    patched: list[torch.nn.Module] = []
    try:
        with torch.no_grad():
            for module in targets:
                module.forward = _packed_forward(module)  # type: ignore[method-assign]
                patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


__all__ = ["can_pack", "packed_linears"]
