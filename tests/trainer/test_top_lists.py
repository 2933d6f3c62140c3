"""trainer.top_lists: each user's stored top-N is bit for bit what one request's scoring gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.top_lists import compute_top_lists


def _data(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    seen = sp.random(60, 80, density=0.15, format="csr", random_state=seed, dtype=np.float32)
    seen.data[:] = 1.0
    keep = rng.random(seen.shape) < 0.7
    keep[5] = False  # a user with no positive: no list (the service answers them by popularity)
    positives = seen.multiply(keep).tocsr().astype(np.float32)
    positives.eliminate_zeros()
    return positives, seen


@pytest.mark.parametrize("name, options, blocks", [("ease", {"lam": 10.0, "dtype": "float64"}, True),
                                                   ("multdae", {"epochs": 1, "seed": 0}, None),
                                                   ("svae", {"epochs": 1, "seed": 0}, None)])
def test_each_list_is_one_requests_answer(name, options, blocks):
    from trainer.training import fit

    X, seen = _data()
    # distinct times in an order that is not the columns' (a sequential model reads it)
    T = sp.csr_matrix((np.random.default_rng(1).permutation(X.nnz).astype(np.float64) + 1e9, X.indices, X.indptr), shape=X.shape)
    model = fit(name, X, timestamps=T, progress=False, **options).model
    lists = compute_top_lists(model, X, seen, n=30, timestamps=T)
    assert lists.items.dtype == np.int32 and lists.scores.dtype == np.float32 and lists.items.shape == (60, 30)
    if blocks is not None:
        assert lists.row_by_row is not blocks
    served = copy.deepcopy(model).float()  # as the service serves it: in float32, on one torch thread (TORCH_THREADS=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        request_answers = {user: served.recommend(X[user], 30, users=np.array([user]), exclude=seen[user].indices,
                                                  timestamps=T[user]) for user in range(60) if X[user].nnz}
    finally:
        torch.set_num_threads(threads)
    for user in range(60):
        if X[user].nnz == 0:
            assert (lists.items[user] == -1).all()
            continue
        ids, scores = request_answers[user]
        assert np.array_equal(lists.items[user], ids[0]) and np.array_equal(lists.scores[user], scores[0])
        assert not set(lists.items[user]) & set(seen[user].indices)  # seen items never listed
    if name == "ease":
        assert model.B.dtype == torch.float64  # scored on a float32 copy: the published weights are untouched
