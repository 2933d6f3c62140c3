"""The shared training loop: early stopping keeps the best epoch, errors are clear, NaN never passes."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from errors import TrainingError, UserError
import trainer
from trainer.protocols import make_split
from trainer.training import model_class, resolve_device


@pytest.fixture(scope="module")
def strong_split(ml100k):
    return make_split("strong", ml100k, seed=0)


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    from interactions.movielens import read_dataset

    return read_dataset("ml-100k", ml100k_dir)


def test_early_stopping_restores_best_epoch(strong_split):
    model, log = trainer.fit("multdae", strong_split.train, valid=strong_split.valid, seed=0, progress=False,
                             epochs=12, patience=3, lr=3e-3)
    curve = [point["ndcg@100"] for point in log["curve"]]
    best = int(np.argmax(curve))
    assert log["best_epoch"] == best + 1
    assert log["valid_value"] == pytest.approx(curve[best])
    assert len(curve) <= 12 and (len(curve) == 12 or len(curve) - 1 - best == 3), "stops after `patience` stale epochs"
    from trainer.evaluation import evaluate_ranking

    # the returned weights are the best epoch's, not the last epoch's
    assert evaluate_ranking(model, strong_split.valid, ks=(100,))["ndcg@100"] == pytest.approx(curve[best], abs=1e-6)


def test_closed_form_records_validation(strong_split):
    model, log = trainer.fit("ease", strong_split.train, valid=strong_split.valid, progress=False)
    assert log["valid_metric"] == "ndcg@100"
    assert log["valid_value"] > 0.3


def test_fit_fills_the_size_rules_and_a_given_value_wins():
    from models.multvae import ANNEAL_EPOCHS

    X = sp.random(60, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    small = dict(dims=(8, 4), epochs=1, batch_size=25, holdout=0.0, progress=False)
    model, _ = trainer.fit("multvae", X, **small)
    assert model.config.total_anneal_steps == ANNEAL_EPOCHS * 3  # 60 users at 25 a batch: 3 updates an epoch
    model, _ = trainer.fit("multvae", X, total_anneal_steps=7, **small)
    assert model.config.total_anneal_steps == 7


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'nope'.*ease"):
        trainer.fit("nope", sp.eye(3, format="csr"))


def test_sequential_model_needs_timestamps():
    with pytest.raises(UserError, match="timestamps"):
        trainer.fit("svae", sp.eye(4, format="csr"), progress=False)


def test_non_sparse_input_rejected():
    with pytest.raises(UserError, match="scipy.sparse"):
        trainer.fit("ease", np.eye(4))


def test_nan_loss_stops_training():
    X = sp.random(40, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    with pytest.raises(TrainingError, match="non-finite"):
        trainer.fit("multdae", X, progress=False, epochs=3, lr=1e30, batch_size=8)


def test_device_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")



@pytest.mark.parametrize("name", ["multvae", "multdae", "cdae"])
def test_bf16_runs_the_dense_layers_in_bfloat16_and_keeps_float32_weights(strong_split, name):
    cls = model_class(name)
    network = cls.network
    seen: set[torch.dtype] = set()

    def spy(self, *args, **kwargs):  # the dtype of the logits at every training forward
        out = network(self, *args, **kwargs)
        if self.training:
            seen.add((out[0] if isinstance(out, tuple) else out).dtype)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "network", spy)
        model, log = trainer.fit(name, strong_split.train, valid=strong_split.valid, seed=0, progress=False, epochs=3,
                                 precision="bf16")
        fp32, fp32_log = trainer.fit(name, strong_split.train, valid=strong_split.valid, seed=0, progress=False,
                                     epochs=3)
    assert seen == {torch.bfloat16, torch.float32}  # bf16 run, then the default run
    assert log["precision"] == "bf16" and fp32_log["precision"] == "fp32"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    bf16_ndcg, fp32_ndcg = log["valid_value"], fp32_log["valid_value"]
    assert bf16_ndcg > 0.1 and abs(bf16_ndcg - fp32_ndcg) < 0.02  # learns as float32 does (untrained: 0.02-0.04)


def test_precision_is_checked_and_recorded():
    X = sp.random(40, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    with pytest.raises(UserError, match="--precision must be fp32 or bf16"):
        trainer.fit("multdae", X, progress=False, epochs=1, precision="fp16")
    with pytest.raises(UserError, match="--precision must be"):
        trainer.fit("ease", X, progress=False, precision="half")  # checked for every model
    _, ease_log = trainer.fit("ease", X, progress=False, precision="bf16")
    assert ease_log["precision"] == "fp32"  # a closed-form model has no bf16 path: recorded as fp32


_MALLOC_OF_A_16_MIB_BLOCK = """
import ctypes, sys
from trainer.training import reuse_freed_memory

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
before = libc.mallinfo2()
block = libc.malloc(16 << 20)
allocated = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
# MiB mapped for the block on its own; MiB of freed memory the process kept
print((allocated.hblkhd - before.hblkhd) >> 20, (freed.fordblks - before.fordblks) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_training_keeps_freed_blocks_instead_of_returning_them_to_the_kernel():
    def mapped_and_kept(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _MALLOC_OF_A_16_MIB_BLOCK, mode], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[2])
        mapped, kept = out.stdout.split()
        return int(mapped), int(kept)

    # glibc's default: a 16 MiB block is mapped for itself and unmapped when freed, so the next
    # one is page-faulted in again (a bfloat16 step's weight copies and gradients, every batch)
    assert mapped_and_kept("default") == (16, 0)
    # after reuse_freed_memory (fit calls it): the block comes from the heap and stays there
    mapped, kept = mapped_and_kept("reuse")
    assert mapped == 0 and kept >= 15


# ---- fit without valid: the epochs chosen on a held-out part, then a refit on everything ------------------
def clicks(n_users: int = 60, n_items: int = 30, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Two taste groups, 6-12 positives each, and timestamps 1, 2, ... in a random order per user."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(n_users):
        block = np.arange(n_items // 2) + (u % 2) * (n_items // 2)
        chosen = rng.choice(block, rng.integers(6, 13), replace=False)
        rows += [u] * len(chosen)
        cols += chosen.tolist()
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    ts = X.copy()
    ts.data = rng.permutation(X.nnz).astype(np.float64) + 1
    return X, ts


def test_holdout_splits_follow_the_protocols_rules():
    from trainer.holdout import hold_out

    X, ts = clicks()
    split = hold_out(X, ts, rating=False, sequential=True, fraction=0.1, seed=3)
    held = split.valid.users
    assert len(held) == 6 and split.train.shape == (54, 30)  # those users leave the training matrix
    assert (split.valid.train_rows == -1).all()
    together = (split.valid.inputs + split.valid.targets).toarray()
    np.testing.assert_array_equal(together, X[held].toarray())  # inputs and targets split their positives
    assert (split.valid.inputs.multiply(split.valid.targets)).nnz == 0
    n = X[held].getnnz(axis=1)
    assert split.valid.targets.getnnz(axis=1).tolist() == (n - np.floor(0.8 * n + 1e-9)).astype(int).tolist()
    for row, user in enumerate(held):  # sequential: the targets are each user's latest items
        latest = ts[user].toarray().ravel()
        assert latest[split.valid.targets[row].indices].min() > latest[split.valid.inputs[row].indices].max()

    ratings = X.multiply(np.arange(1, 31, dtype=np.float32)).tocsr()
    rated = hold_out(ratings, None, rating=True, sequential=False, fraction=0.1, seed=3)
    assert rated.valid.nnz == round(0.1 * X.nnz) and rated.train.nnz == X.nnz - rated.valid.nnz
    np.testing.assert_array_equal((rated.train + rated.valid).toarray(), ratings.toarray())
    assert hold_out(X[:3], None, rating=True, sequential=False, fraction=0.1, seed=0) is None  # too few to hold out


def test_fit_without_valid_chooses_its_epochs_on_a_holdout_then_trains_on_everything():
    X, _ = clicks()
    model, log = trainer.fit("multdae", X, seed=0, progress=False, epochs=40, patience=3, batch_size=16, dims=(8,))
    held = log["holdout"]
    assert held["valid_metric"] == "ndcg@100" and held["epochs_run"] <= 40
    assert "6 of 60 users" in held["held_out"]
    assert log["epochs"] == held["best_epoch"] >= 1  # the refit ran exactly the chosen epochs
    assert model.n_users == 60  # the returned model was trained on every user
    again, again_log = trainer.fit("multdae", X, seed=0, progress=False, epochs=40, patience=3, batch_size=16,
                                   dims=(8,))
    assert again_log["holdout"]["best_epoch"] == held["best_epoch"]  # seeded


def test_holdout_zero_trains_every_epoch_and_a_bad_fraction_is_refused():
    X, _ = clicks()
    model, log = trainer.fit("multdae", X, seed=0, progress=False, epochs=3, dims=(8,), holdout=0)
    assert log["epochs"] == 3 and "holdout" not in log
    with pytest.raises(UserError, match="holdout"):
        trainer.fit("multdae", X, progress=False, epochs=1, holdout=1.0)
    tiny, tiny_log = trainer.fit("autorec-u", X[:3].multiply(4.0).tocsr(), progress=False, epochs=2, hidden=4)
    assert tiny_log["epochs"] == 2 and "too little data" in tiny_log["holdout"]["held_out"]


@pytest.mark.slow
@pytest.mark.parametrize("name, margin", [("autorec-i", 0.04), ("autorec-u", 0.02), ("deeprec", 0.02)])
def test_fit_without_valid_beats_the_bias_baseline_on_a_90_10_split(ml100k, name, margin):
    """Issue 20: what a user of the Python API gets by default, on rating-random's train + validation (90%)."""
    from models.base import TrainData
    from models.baselines import fit_baseline
    from trainer.evaluation import evaluate_rating

    split = make_split("rating-random", ml100k, seed=0)
    train = (split.train + split.valid).tocsr()
    bias = fit_baseline("bias", TrainData(train, rating_range=split.rating_range))
    model, log = trainer.fit(name, train, seed=0, progress=False)
    assert "holdout" in log
    model_rmse = evaluate_rating(model, train, split.test, fallback=bias)["rmse"]
    assert model_rmse <= evaluate_rating(bias, train, split.test, fallback=bias)["rmse"] - margin


def test_a_failed_data_parallel_fit_leaves_the_models_config_as_it_was():
    from models.base import TrainData
    from trainer.training import _gradient_training

    X = sp.random(16, 10, density=0.3, format="csr", dtype=np.float32, random_state=0)
    cls = model_class("multdae")
    model = cls(cls.Config(batch_size=8, epochs=1), n_items=10, n_users=16, rating_range=(0.0, 1.0))
    config = model.config
    data = TrainData(X=X, rating_range=(0.0, 1.0), rank=0, world_size=2)
    # two ranks but no process group: DDP refuses after the per-rank batch size (4) was set on the model
    with pytest.raises((RuntimeError, ValueError)):
        _gradient_training(model, data, None, np.random.default_rng(0), False, {"curve": []})
    assert model.config is config
