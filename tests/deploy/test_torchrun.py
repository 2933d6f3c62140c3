"""Data-parallel training: DistributedDataParallel under torchrun, gloo on this machine's CPU.

Three levels:
* each rank's batches hold its own share of the examples (sharded by user, or by item
  for I-AutoRec), for every gradient-trained model;
* two gloo processes running ``trainer.fit`` end with bit-identical weights although they
  saw different data (their losses differ): the gradients were averaged at every step;
* ``torchrun --nproc_per_node=2 -m trainer train`` on ml-100k publishes one version whose
  validation NDCG@100 is within seed-to-seed noise of the single-process run.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from _deploy_support import base_env, ddp_worker, free_port, planted_data, run

GRADIENT_MODELS = ["autorec-u", "autorec-i", "deeprec", "cdae", "multvae", "multdae", "svae"]

# Mult-DAE on ml-100k, strong protocol, split seed 0, 20 epochs of batches of 100: validation
# NDCG@100 over training seeds 0-7 is 0.397 with a standard deviation of 0.0042 (0.014 when the
# split's seed varies too). Two processes draw other dropout masks and other batches than one, so
# their run is another draw: the difference of two draws has a std of 0.006; allow ~3.4 of them.
EPOCHS, BATCH = 20, 100
NDCG_NOISE = 0.02


def _examples(batch) -> int:
    first = batch[0] if isinstance(batch, tuple) else batch
    return len(first)  # a tensor's rows, or a RowBatch's (models/rows.py)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_each_rank_gets_its_own_share_of_an_epoch(name):
    from models import REGISTRY
    from models.base import TrainData

    X, ts = planted_data()
    cls = REGISTRY[name]
    model = cls(cls.Config(batch_size=8), n_items=X.shape[1], n_users=X.shape[0])
    seen = {}
    for rank, world in [(0, 1), (0, 2), (1, 2)]:
        data = TrainData(X, ts, rating_range=(1.0, 5.0), rank=rank, world_size=world)
        seen[rank, world] = sum(_examples(b) for b in model.training_batches(data, np.random.default_rng(0)))
    whole = seen[0, 1]
    assert seen[0, 2] == seen[1, 2] == whole // 2, f"{name}: one process sees {whole} examples, two ranks see {seen}"


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    """Different data per rank, same weights at the end: DDP averaged the gradients (DeepRec's own
    train_step included) and early stopping (validated on multdae) took the same epoch on both."""
    torch.multiprocessing.start_processes(
        ddp_worker, args=(2, free_port(), str(tmp_path), GRADIENT_MODELS, "multdae"), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for name in GRADIENT_MODELS:
        first, second = ranks[0][name], ranks[1][name]
        assert first["log"]["world_size"] == 2
        losses = [[p["loss"] for p in rank["log"]["curve"]] for rank in (first, second)]
        assert losses[0] != losses[1], f"{name}: both ranks trained on the same data (losses {losses[0]})"
        assert first["state"].keys() == second["state"].keys()
        for key, tensor in first["state"].items():
            assert torch.equal(tensor, second["state"][key]), f"{name}: {key} differs between the ranks"
    assert ranks[0]["multdae"]["log"]["best_epoch"] == ranks[1]["multdae"]["log"]["best_epoch"]


def _published(artifacts) -> dict:
    """The manifest of the one version a fresh registry holds after one training run."""
    versions = [p for p in artifacts.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(versions) == 1, [p.name for p in artifacts.iterdir()]
    assert (artifacts / "LATEST").read_text().strip() == versions[0].name
    return json.loads((versions[0] / "manifest.json").read_text())


@pytest.mark.slow
def test_torchrun_publishes_a_version_as_good_as_one_process(tmp_path, ml100k_dir, ml100k_cache):
    train = ["-m", "trainer", "train", "--dataset", "ml-100k", "--source", str(ml100k_dir), "--models", "multdae",
             "--no-gate", "--no-progress", "--seed", "0", "--set", f"multdae.epochs={EPOCHS}",
             "--set", f"multdae.batch_size={BATCH}"]
    # torchrun is torch.distributed.run; calling it through this interpreter finds it in any venv
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = base_env(DATA_DIR=str(ml100k_cache))
    with ThreadPoolExecutor(2) as pool:  # both at once: they mostly wait on imports and each other
        jobs = [pool.submit(run, command + ["--artifacts-dir", str(tmp_path / folder)], env, 400)
                for command, folder in [(torchrun + train, "ddp"), ([sys.executable] + train, "one")]]
        for job in jobs:
            job.result()
    parallel, single = _published(tmp_path / "ddp"), _published(tmp_path / "one")

    ddp, one = parallel["models"]["multdae"], single["models"]["multdae"]
    print(f"valid ndcg@100: torchrun x2 {ddp['valid_metric']['value']:.4f}, one process {one['valid_metric']['value']:.4f}; "
          f"test ndcg@100: {ddp['metrics']['ndcg@100']:.4f} vs {one['metrics']['ndcg@100']:.4f}")
    metrics = json.loads((tmp_path / "ddp" / parallel["version"] / "multdae" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu" and len(metrics["curve"]) == EPOCHS
    assert ddp["valid_metric"]["name"] == one["valid_metric"]["name"] == "ndcg@100"
    assert one["valid_metric"]["value"] > 0.35, one  # the single run learnt something worth comparing with
    assert abs(ddp["valid_metric"]["value"] - one["valid_metric"]["value"]) <= NDCG_NOISE, (ddp, one)
    assert abs(ddp["metrics"]["ndcg@100"] - one["metrics"]["ndcg@100"]) <= NDCG_NOISE, (ddp, one)
