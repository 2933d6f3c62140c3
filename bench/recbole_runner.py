"""Train one RecBole 1.2.1 model on a split written by ``bench/training.py``; time it; dump its test scores.

Runs inside RecBole's own virtual environment (``bench/out/rbvenv``), never the
project's, and imports nothing from the project:

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 bench/out/rbvenv/bin/python bench/recbole_runner.py job.json

``job.json``: ``{"data_path", "dataset", "model", "epochs", "stopping_step", "seed",
"n_users", "n_items", "scores_out", "result_out", "checkpoint_dir"}``. The dataset is
given as RecBole atomic files ``<dataset>.{train,valid,test}.inter`` whose user and item
tokens are our row and column indices, so RecBole trains, validates (early stopping on
NDCG@100) and tests on exactly our split. The result JSON holds the fit time (model
construction, which is where EASE solves, plus every training and validation epoch),
per-epoch times, the best epoch and RecBole's own test metrics; the scores file is a
float32 ``.npy`` [n_users, n_items] in our index order, scored from each user's training
history, for our metric code to evaluate.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(job_path: str) -> int:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, get_trainer, init_seed

    job = json.loads(Path(job_path).read_text())
    config = Config(
        model=job["model"],
        dataset=job["dataset"],
        config_dict={
            "data_path": job["data_path"],
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id"]},
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "RATING_FIELD": None,
            "TIME_FIELD": None,
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
            "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
            "metrics": ["NDCG", "Recall"],
            "topk": [10, 20, 100],
            "valid_metric": "NDCG@100",  # the same model selection as ours
            # Full-sort evaluation batches are counted in user x item pairs: the default 4096 is
            # two users per batch at ml-100k's 1,682 items, which makes every validation crawl.
            "eval_batch_size": 1_000_000,
            "epochs": job["epochs"],
            "stopping_step": job["stopping_step"],
            "seed": job["seed"],
            "reproducibility": True,
            "use_gpu": torch.cuda.is_available(),
            "show_progress": False,
            "state": "WARNING",
            "checkpoint_dir": job["checkpoint_dir"],
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.WARNING)
    setup_started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    setup_seconds = time.perf_counter() - setup_started

    importlib.import_module("torch._dynamo")  # the first optimiser imports it (~0.8 s): before the clock, as on our side

    fit_started = time.perf_counter()
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])  # EASE solves in here
    construct_seconds = time.perf_counter() - fit_started
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epochs: list[dict] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*args, **kwargs):
        started = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        epochs.append({"epoch": len(epochs) + 1, "train_seconds": time.perf_counter() - started})
        return loss

    def timed_valid(*args, **kwargs):
        started = time.perf_counter()
        score, result = valid_epoch(*args, **kwargs)
        epochs[-1].update(valid_seconds=time.perf_counter() - started, ndcg100=float(score))
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=False)
    fit_seconds = time.perf_counter() - fit_started
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    scores = full_scores(trainer.model, dataset, job["n_users"], job["n_items"], Interaction, config["device"])
    np.save(job["scores_out"], scores)
    valid_curve = [e.get("ndcg100", float("-inf")) for e in epochs]
    best = int(np.argmax(valid_curve)) + 1 if epochs else 0
    to_best = construct_seconds + sum(e["train_seconds"] + e.get("valid_seconds", 0.0) for e in epochs[:best])
    result = {
        "model": job["model"], "recbole": __import__("recbole").__version__, "torch": torch.__version__,
        "setup_seconds": setup_seconds, "construct_seconds": construct_seconds, "fit_seconds": fit_seconds,
        "seconds_to_best": to_best, "epochs": len(epochs), "best_epoch": best,
        "train_seconds_per_epoch": float(np.mean([e["train_seconds"] for e in epochs])) if epochs else 0.0,
        "curve": epochs, "recbole_test": {k: float(v) for k, v in test_result.items()},
    }
    Path(job["result_out"]).write_text(json.dumps(result, indent=2))
    return 0


@torch.no_grad()
def full_scores(model, dataset, n_users: int, n_items: int, interaction_cls, device) -> np.ndarray:
    """Every user's score for every item, rows and columns in OUR index order (tokens are our indices)."""
    model.eval()
    user_tokens = dataset.field2id_token["user_id"]  # internal id -> token; id 0 is [PAD]
    item_tokens = dataset.field2id_token["item_id"]
    internal_users = np.array([i for i, t in enumerate(user_tokens) if t != "[PAD]"])
    our_rows = np.array([int(user_tokens[i]) for i in internal_users])
    item_cols = np.array([int(t) if t != "[PAD]" else -1 for t in item_tokens])
    scores = np.full((n_users, n_items), -np.inf, dtype=np.float32)
    keep = item_cols >= 0
    for start in range(0, len(internal_users), 512):
        batch = torch.as_tensor(internal_users[start : start + 512], device=device)
        out = model.full_sort_predict(interaction_cls({"user_id": batch})).view(len(batch), -1).float().cpu().numpy()
        rows = our_rows[start : start + 512]
        block = np.full((len(batch), n_items), -np.inf, dtype=np.float32)
        block[:, item_cols[keep]] = out[:, keep]
        scores[rows] = block
    return scores


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
