"""``reduced_precision`` models under bfloat16 autocast (the trainer's ``--precision bf16``): their
dense layers run in bfloat16, their loss comes out float32 and close to the float32 loss, and the
weights and gradients stay float32."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import models
from models.base import TrainData
from models.sizes import DataShape, for_data

TINY = {
    "autorec-i": dict(hidden=16), "autorec-u": dict(hidden=16), "deeprec": dict(layers=(16, 8)),
    "cdae": dict(hidden=8), "multvae": dict(dims=(16, 8)), "multdae": dict(dims=(16, 8)),
    "recvae": dict(hidden=16, latent=8), "svae": dict(item_embed_size=8, rnn_size=8, hidden_size=8, latent_size=4),
}


def first_batch_loss(name: str, X: sp.csr_matrix, ts: sp.csr_matrix, bf16: bool) -> tuple[torch.Tensor, set, nn.Module]:
    """The loss of the model's first training batch (same seed, same weights), and the dtypes its Linear layers gave."""
    cls = models.REGISTRY[name]
    torch.manual_seed(0)
    config = for_data(cls.Config(**TINY[name], batch_size=16), DataShape.of(X))  # the trainer's size rules, as fit applies them
    model = cls(config, n_items=X.shape[1], n_users=X.shape[0]).train()
    batch = next(iter(model.training_batches(TrainData(X, ts), np.random.default_rng(0))))
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    torch.manual_seed(1)  # the same dropout masks and samples in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(batch, **model.annealing(500, 1))
    for hook in hooks:
        hook.remove()
    return loss, dtypes, model


@pytest.mark.parametrize("name", [name for name, cls in models.REGISTRY.items() if cls.reduced_precision])
def test_loss_in_bfloat16_is_float32_and_close_to_the_float32_loss(name):
    rng = np.random.default_rng(0)
    X = sp.random(48, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = rng.integers(1, 6, X.nnz).astype(np.float32)  # ratings; the rankers read them as clicks
    ts = X.copy()
    ts.data = rng.permutation(X.nnz).astype(np.float64)
    exact, exact_dtypes, _ = first_batch_loss(name, X, ts, bf16=False)
    loss, dtypes, model = first_batch_loss(name, X, ts, bf16=True)
    assert exact_dtypes == {torch.float32} and torch.bfloat16 in dtypes  # the dense layers ran in bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(exact.item(), rel=0.03)
    loss.backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
