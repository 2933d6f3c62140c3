"""CDAE: the per-user node (known users only), the corruption, both of the paper's losses."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, TrainData, build_config
from models.rows import as_row_batch
from models.cdae import CDAE, CDAEConfig

N_USERS, N_ITEMS = 16, 10


def tiny_clicks() -> sp.csr_matrix:
    """Two taste groups of 8 users, each clicking its own 5 items."""
    return sp.csr_matrix(np.kron(np.eye(2), np.ones((N_USERS // 2, N_ITEMS // 2))).astype(np.float32))


def make(**overrides) -> CDAE:
    torch.manual_seed(0)
    model = CDAE(build_config(CDAEConfig, {"hidden": 6, **overrides}), n_items=N_ITEMS, n_users=N_USERS)
    with torch.no_grad():
        model.user_nodes.weight.normal_(std=1.0)  # a visible user node, as after training
    return model.eval()


def test_user_node_used_for_known_users_and_zero_for_new_ones():
    model = make()
    rows = tiny_clicks()[[0, 9]]
    anonymous = model.scores(rows)
    known = model.scores(rows, users=np.array([0, 9]))
    assert not torch.allclose(known, anonymous), "V_u changes a known user's scores"
    torch.testing.assert_close(model.scores(rows, users=np.array([-1, N_USERS + 4])), anonymous)
    mixed = model.scores(rows, users=np.array([0, -1]))
    torch.testing.assert_close(mixed[0], known[0])
    torch.testing.assert_close(mixed[1], anonymous[1])
    # "neutral" means exactly the network with V_u = 0
    y = torch.from_numpy(rows.toarray())
    torch.testing.assert_close(anonymous, torch.sigmoid(model.network(y, torch.zeros(2, 6))))


def test_corruption_only_in_training():
    model = make(corruption=0.5)
    y = torch.from_numpy(tiny_clicks()[:4].toarray())
    nodes = torch.zeros(4, 6)
    torch.testing.assert_close(model.network(y, nodes), model.network(y, nodes))
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model.network(y, nodes), model.network(y, nodes))


@pytest.mark.parametrize(
    "options",
    [dict(loss="bce"), dict(loss="square", output="identity"), dict(loss="square", output="sigmoid"), dict(negatives=1)],
)
def test_both_losses_decrease_on_a_tiny_matrix(options):
    model = make(corruption=0.2, batch_size=N_USERS, lr=0.05, **options)
    data, rng = TrainData(tiny_clicks()), np.random.default_rng(0)
    optimizer = model.configure_optimizer()
    model.train()
    epoch_losses = []
    for _ in range(40):
        epoch_losses.append(np.mean([model.train_step(batch, optimizer) for batch in model.training_batches(data, rng)]))
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], f"{options}: {epoch_losses[0]:.3f} -> {epoch_losses[-1]:.3f}"
    ids, _ = model.recommend(tiny_clicks()[[0, 9]], k=3, exclude_seen=False, users=np.array([0, 9]))
    assert set(ids[0]) <= set(range(5)) and set(ids[1]) <= set(range(5, 10)), "each user's own block first"


def test_negative_sampling_counts_fewer_zeros():
    dense, sampled = make(corruption=0.0), make(corruption=0.0, negatives=1)
    sampled.load_state_dict(dense.state_dict())
    one_click = np.eye(N_ITEMS, dtype=np.float32)[:4]  # 1 positive, 9 zeros: each zero kept with prob. 1/9
    batch = as_row_batch(sp.csr_matrix(one_click), N_ITEMS, "cpu", binary=True)  # rows 0..3: users 0..3
    torch.manual_seed(0)
    with torch.no_grad():
        full, few = float(dense.loss(batch)), float(sampled.loss(batch))
    assert few < 0.6 * full  # every entry's logistic loss is > 0, so dropping ~8 of 9 zeros shows


def test_invalid_combinations_rejected():
    with pytest.raises(ModelInputError, match="needs output 'sigmoid'"):
        build_config(CDAEConfig, {"loss": "bce", "output": "identity"})
    with pytest.raises(ModelInputError, match="loss must be"):
        build_config(CDAEConfig, {"loss": "hinge"})
    with pytest.raises(ModelInputError, match="corruption"):
        build_config(CDAEConfig, {"corruption": 1.0})
