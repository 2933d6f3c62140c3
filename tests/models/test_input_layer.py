"""InputLayer: the first layer of the click autoencoders, stored one weight row per item."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import models
from models import layers
from models.layers import InputLayer
from models.rows import as_row_batch
from models.multdae import MultDAE, MultDAEConfig
from models.multvae import MultVAE, MultVAEConfig


def clicks(n_rows: int = 7, n_items: int = 11, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_rows, n_items)) < 0.3).astype(np.float32) * rng.uniform(0.5, 2.0, (n_rows, n_items))
    dense[3] = 0.0  # a row without clicks sums no rows: the bias alone
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_and_dense_rows_give_nn_linears_output_and_gradients():
    torch.manual_seed(0)
    reference = nn.Linear(11, 5)
    layer = InputLayer(reference)
    rows = clicks()
    dense = torch.from_numpy(rows.toarray())
    values = torch.from_numpy(rows.data)
    sparse = torch.sparse_csr_tensor(
        torch.from_numpy(rows.indptr.astype(np.int64)), torch.from_numpy(rows.indices.astype(np.int64)), values,
        size=rows.shape, check_invariants=True,
    )
    upstream = torch.randn(7, 5)

    expected = reference(dense)
    expected.backward(upstream)
    for x in (sparse, dense):
        layer.zero_grad()
        out = layer(x)
        torch.testing.assert_close(out, expected)
        out.backward(upstream)
        torch.testing.assert_close(layer.item_weight.grad, reference.weight.grad.t())
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad)
    torch.testing.assert_close(out[3], reference.bias.detach())  # the empty row
    assert layer.weight.shape == reference.weight.shape and layer.item_weight.is_contiguous()


def layer_under_autocast(monkeypatch, amx: bool) -> tuple[nn.Linear, InputLayer, torch.Tensor, torch.Tensor]:
    """(nn.Linear, the InputLayer made from it, clicks as sparse CSR, the same clicks dense) on a CPU
    with or without AMX as far as the layer can tell."""
    monkeypatch.setattr(layers, "cpu_has_amx_bf16", lambda: amx)
    torch.manual_seed(0)
    reference = nn.Linear(11, 5)
    dense = torch.from_numpy((clicks().toarray() > 0).astype(np.float32))
    return reference, InputLayer(reference), as_row_batch(clicks(), 11, "cpu", binary=True).sparse(), dense


def test_stays_float32_under_bfloat16_autocast_without_amx(monkeypatch):
    reference, layer, x, dense = layer_under_autocast(monkeypatch, amx=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(dense))


def test_multiplies_the_dense_batch_in_bfloat16_on_a_cpu_with_amx(monkeypatch):
    # bfloat16 matmuls run on any CPU (AMX only makes them fast), so the path is tested everywhere
    reference, layer, x, dense = layer_under_autocast(monkeypatch, amx=True)
    upstream = torch.randn(7, 5)
    expected = reference(dense)
    expected.backward(upstream)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)  # bfloat16: 8 significant bits
    out.float().backward(upstream)
    assert layer.item_weight.grad.dtype == torch.float32  # the weights and their gradients stay float32
    torch.testing.assert_close(layer.item_weight.grad, reference.weight.grad.t(), atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", enabled=False):
        assert layer(x).dtype == torch.float32  # outside an autocast (validation, serving): the sparse sum


def test_a_mostly_empty_batch_stays_a_sparse_float32_sum_even_with_amx(monkeypatch):
    monkeypatch.setattr(layers, "cpu_has_amx_bf16", lambda: True)
    torch.manual_seed(0)
    reference = nn.Linear(400, 5)
    layer = InputLayer(reference)
    rows = sp.random(7, 400, density=layers.DENSE_MIN_DENSITY / 2, format="csr", dtype=np.float32, random_state=0)
    x = as_row_batch(rows, rows.shape[1], "cpu", binary=True).sparse()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32  # ml-20m's density: the sparse sum was twice as fast there
    torch.testing.assert_close(out, reference(torch.from_numpy((rows.toarray() > 0).astype(np.float32))))


def test_weights_saved_in_nn_linears_layout_still_load(tmp_path):
    """Artifacts written before InputLayer hold the first layer as ``weight`` [out, n_items]."""
    rows = clicks(n_items=11)
    for model in (MultVAE(MultVAEConfig(dims=(6, 3)), n_items=11, n_users=7),
                  MultVAE(MultVAEConfig(dims=(3,)), n_items=11, n_users=7),  # no hidden layer: to_posterior reads clicks
                  MultDAE(MultDAEConfig(dims=(4,)), n_items=11, n_users=7)):
        model.eval()
        expected = model.scores(rows)
        model.save(tmp_path / model.name)
        old_layout = {}
        for key, tensor in model.state_dict().items():
            if key.endswith("item_weight"):
                key, tensor = key.replace("item_weight", "weight"), tensor.t()
            old_layout[key] = tensor.contiguous()
        from safetensors.torch import save_file

        save_file(old_layout, str(tmp_path / model.name / "weights.safetensors"))
        loaded = models.load(tmp_path / model.name)
        torch.testing.assert_close(loaded.scores(rows), expected)
        assert any(isinstance(m, InputLayer) for m in loaded.modules())
