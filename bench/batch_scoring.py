"""Batch scoring: every user scored and their top 100 taken, for each ranker, in users per second.

    python bench/batch_scoring.py                                # ml-100k, trained rankers
    python bench/batch_scoring.py --scale synthetic --synthetic-interactions 2000000
    python bench/batch_scoring.py --device cuda                  # on a GPU when there is one

ml-100k: each ranker is trained briefly with ``trainer.fit`` (2 epochs; EASE solved), then
all 943 users' rows go through ``model.recommend(rows, k=100, users=...)`` in batches of
``--batch-rows`` (seen items excluded, as the service does). Synthetic scale (``python -m
trainer data synthetic``'s generator; 140k users x 20k items by default): the models keep
their initial weights, since scoring costs the same whatever the weights are and training
at that scale is ``bench/training.py``'s business. ``--device auto`` takes the GPU when present.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ML100K, add_scale_arguments, machine_info, print_table, pyplot, save_figure, synthetic_description, write_json,
)

K = 100


def rankers() -> list[str]:
    from models import REGISTRY

    return [name for name, cls in REGISTRY.items() if cls.task == "ranking"]


def matrices(args) -> tuple[str, sp.csr_matrix, sp.csr_matrix]:
    """(description, binary user x item matrix, timestamps with the same pattern)."""
    if args.scale == "ml-100k":
        from interactions.datasets import get_dataset

        inter = get_dataset("ml-100k", source=ML100K, progress=False)
        desc = "ml-100k"
    else:
        from trainer.synthetic import generate

        inter = generate(args.synthetic_users, args.synthetic_items, args.synthetic_interactions, seed=0)
        desc = synthetic_description(args)
    shape = (inter.n_users, inter.n_items)
    X = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=shape)
    T = sp.csr_matrix((inter.timestamps.astype(np.float64), (inter.users, inter.items)), shape=shape)
    return desc, X, T


def build(name: str, X: sp.csr_matrix, T: sp.csr_matrix, trained: bool, device: str):
    from models import REGISTRY
    from models.base import TrainData, build_config
    import trainer
    from trainer.training import resolve_device

    cls = REGISTRY[name]
    if trained:
        hyper = {} if cls.closed_form else {"epochs": 2}
        return trainer.fit(name, X, timestamps=T, progress=False, device=device, holdout=0,
                           **hyper).model
    model = cls(build_config(cls.Config, {}), n_items=X.shape[1], n_users=X.shape[0]).to(resolve_device(device))
    model.prepare_scoring(TrainData(X=X, timestamps=T, rating_range=(0.0, 1.0)))
    return model.eval()


def score_all(model, X: sp.csr_matrix, T: sp.csr_matrix, batch_rows: int) -> float:
    """Seconds to take every user's top K (seen items excluded), in batches of rows."""
    import torch

    users = np.arange(X.shape[0])
    started = time.perf_counter()
    for start in range(0, X.shape[0], batch_rows):
        rows = slice(start, start + batch_rows)
        model.recommend(X[rows], k=K, users=users[rows], timestamps=T[rows])
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_arguments(parser)
    parser.add_argument("--models", default="all", help="'all' rankers or a comma-separated list")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--max-users", type=int, default=None, help="score only the first N users (quick runs)")
    args = parser.parse_args(argv)
    names = rankers() if args.models == "all" else [m.strip() for m in args.models.split(",")]
    if set(names) - set(rankers()):
        parser.error(f"not a ranker: {', '.join(sorted(set(names) - set(rankers())))}; rankers: {', '.join(rankers())}")

    desc, X, T = matrices(args)
    trained = args.scale == "ml-100k"
    rows = []
    for name in names:
        print(f"  {name} ...", flush=True)
        model = build(name, X, T, trained, args.device)
        Xs, Ts = (X, T) if args.max_users is None else (X[: args.max_users], T[: args.max_users])
        score_all(model, Xs[: min(64, Xs.shape[0])], Ts[: min(64, Xs.shape[0])], args.batch_rows)  # warm-up
        seconds = score_all(model, Xs, Ts, args.batch_rows)
        rows.append({"model": name, "device": str(model.device), "users": Xs.shape[0], "seconds": seconds,
                     "users_per_s": Xs.shape[0] / seconds, "weights": "trained" if trained else "initial"})
        del model
    title = f"batch scoring · {desc} · top {K} · {args.batch_rows} rows per batch"
    print()
    print_table(rows, [("model", "model", ""), ("device", "device", ""), ("users", "users", ",d"),
                       ("seconds", "seconds", ".2f"), ("users_per_s", "users/s", ",.0f"), ("weights", "weights", "")],
                title=title)
    name = "batch_scoring" if args.scale == "ml-100k" else "batch_scoring-synthetic"
    write_json(name, {"bench": "batch_scoring", "data": desc, "k": K, "batch_rows": args.batch_rows,
                      "machine": machine_info(), "results": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["model"] for r in rows], [r["users_per_s"] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel(f"users scored per second (top {K}, log)")
    ax.set_title(title, fontsize="small")
    save_figure(name, fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
