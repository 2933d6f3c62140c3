"""The first layer of the click autoencoders, which reads a batch's non-zeros only.

``sparse_rows`` applies the input's normalisation and dropout to a batch's stored values alone, and
``InputLayer`` multiplies the result by W as a sum of its items' weight rows: an epoch costs per click,
not per item (tests/models/test_input_layer.py; bench/RESULTS.md, "Figures moved out").
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def sparse_rows(x: torch.Tensor, dropout: nn.Module, normalize: bool = False) -> torch.Tensor:
    """``dropout(F.normalize(x, dim=1))`` (``normalize=False``: ``dropout(x)``) as a sparse CSR tensor.

    Both act on the non-zeros alone (a zero stays zero, whatever the mask), so no dense batch
    is made and ``InputLayer`` then reads only the weight rows of the batch's items.
    ``x``: a sparse CSR tensor (``RowBatch.sparse``) or dense rows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        x = x if x.layout == torch.sparse_csr else x.to_sparse_csr()
        crow, col, values = x.crow_indices(), x.col_indices(), x.values()
        if normalize:
            per_row = crow.diff()
            norms = torch.segment_reduce(values.square(), "sum", lengths=per_row).sqrt()
            values = values / norms.clamp_min(1e-12).repeat_interleave(per_row, output_size=values.shape[0])  # F.normalize's eps; no sync
        return torch.sparse_csr_tensor(crow, col, dropout(values), x.shape, check_invariants=False)  # valid: x's own


# Density from which the first layer's dense bf16 product on AMX beats the sparse (bench/RESULTS.md, "Figures moved out").
DENSE_MIN_DENSITY = 0.025


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def _bfloat16_matrix_units(device: torch.device) -> bool:
    """A bfloat16 autocast is on for ``device`` and the device multiplies bfloat16 matrices in
    hardware built for it: AMX, not AVX512-BF16 alone (bench/RESULTS.md, "Figures moved out")."""
    return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and cpu_has_amx_bf16())


class InputLayer(nn.Module):
    """An autoencoder's first layer, ``x W^T + b`` on click rows, with W stored one row per item.

    ``nn.Linear`` stores W as [out, n_items]; here it is ``item_weight`` [n_items, out], so a
    sparse batch's product is a sum of its items' rows (``embedding_bag``), and so is W's
    gradient: faster epochs than a sparse x dense product through ``nn.Linear``'s layout
    (bench/RESULTS.md, "Figures moved out").
    """

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.item_weight = nn.Parameter(layer.weight.detach().t().contiguous())  # same values as layer's
        self.bias = nn.Parameter(layer.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """W as ``nn.Linear`` has it, [out, n_items] (a view: for the L2 term and tests)."""
        return self.item_weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.strided:
            return torch.addmm(self.bias, x, self.item_weight)
        if _bfloat16_matrix_units(x.device) and x.values().numel() >= DENSE_MIN_DENSITY * x.shape[0] * x.shape[1]:
            # On AMX dense bf16 x W beats the sparse sum, whose backward sorts (bench/RESULTS.md, "Figures moved out").
            return torch.addmm(self.bias, x.to_dense(), self.item_weight)
        # float32 whatever the autocast: a sum of a few rows gains nothing from bfloat16
        with torch.autocast(x.device.type, enabled=False):
            return F.embedding_bag(
                x.col_indices(), self.item_weight, x.crow_indices(), mode="sum", per_sample_weights=x.values(),
                include_last_offset=True,
            ) + self.bias

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # Weights saved before this layer existed hold nn.Linear's ``weight`` [out, n_items]
        if prefix + "weight" in state_dict and prefix + "item_weight" not in state_dict:
            state_dict[prefix + "item_weight"] = state_dict.pop(prefix + "weight").t()
        super()._load_from_state_dict(state_dict, prefix, *args)
