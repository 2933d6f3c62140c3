"""Training speed against RecBole 1.2.1, on the same split, machine and run, with both sides' test metrics.

    python bench/training.py                         # all our models; RecBole MultiVAE, MultiDAE, CDAE, EASE
    python bench/training.py --models multvae,ease --epochs 20 --no-recbole

Data: ml-100k, ``seed-ranking`` split (protocols.md; every rating a positive, per user a
random 20% test, and 20% of the rest validation), seed 0. Both sides train on its train
part and stop early on validation NDCG@100 with the same rule: at most our config's
``epochs``, stopping after our config's ``patience`` epochs without improvement (RecBole:
``epochs``/``stopping_step``; ``--epochs``/``--patience`` override both sides alike). Each
side keeps its own default hyper-parameters, except RecBole's evaluation batch, raised from
4,096 user-item pairs (two users per batch here) to 1,000,000 so its validation is not
slowed down by a setting unrelated to the model.

RecBole runs in its own virtual environment (``bench/out/rbvenv``, created on demand as
``shared/reference/recbole-here.md`` says) through ``bench/recbole_runner.py``, on our
split written as its atomic files, and returns every user's scores. Both sides' test
lists are then made and scored by the same code: scores from the user's train row,
train and validation items excluded, top 100, ``trainer.metrics.ranking_report`` against
the test items. (Our models can also fold in train + validation at test time, as our
protocol does; that figure is shown too, as ``ndcg@100 fold-in``.)

Times: ``fit s`` is everything from building the model to the restored best epoch
(training epochs and per-epoch validation; EASE's solve); ``s/epoch`` is a training
epoch without validation. RecBole's dataset building is reported apart (``setup``).
Rating models (AutoRec, DeepRec) have no RecBole counterpart here: they are timed on
``rating-random`` with test RMSE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ML100K, OUT_DIR, REPO, BenchError, machine_info, print_table, pyplot, save_figure, verdict, write_json,
)

RECBOLE = {"multvae": "MultiVAE", "multdae": "MultiDAE", "cdae": "CDAE", "ease": "EASE"}
RBVENV = OUT_DIR / "rbvenv"
SPEEDUP_TARGET = 3.0
KS = (10, 20, 100)


# ---- RecBole's environment ------------------------------------------------------------------
def ensure_recbole_venv() -> Path:
    """``bench/out/rbvenv`` with recbole==1.2.1 and the pins it needs here (about 1.5 minutes once)."""
    python = RBVENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import recbole"], capture_output=True).returncode == 0:
        return python
    print(f"creating {RBVENV.relative_to(REPO)} (RecBole 1.2.1) ...", flush=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    steps = [
        [str(base), "-m", "venv", str(RBVENV)],
        [str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
        [str(python), "-m", "pip", "install", "-q", "recbole==1.2.1"],
        # ray wants pkg_resources; RecBole uses np.bool8; pandas >= 2.3 breaks with numpy 1
        [str(python), "-m", "pip", "install", "-q", "setuptools<81", "numpy<2", "pandas<2.3"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(step[:4])} failed:\n{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    return python


def write_atomic(split, folder: Path, dataset: str) -> None:
    """Our split as RecBole's pre-split atomic files; tokens are our row/column indices."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": split.train, "valid": split.valid.targets, "test": split.test.targets}
    for suffix, matrix in parts.items():
        coo = sp.coo_matrix(matrix)
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in zip(coo.row, coo.col)]
        (folder / f"{dataset}.{suffix}.inter").write_text("\n".join(lines) + "\n")


def run_recbole(python: Path, model: str, split, workdir: Path, epochs: int, patience: int, seed: int) -> dict:
    data_path = workdir / "atomic"
    if not (data_path / "aerec").exists():
        write_atomic(split, data_path / "aerec", "aerec")
    job = {
        "data_path": str(data_path), "dataset": "aerec", "model": model, "epochs": epochs, "stopping_step": patience,
        "seed": seed, "n_users": split.train.shape[0], "n_items": split.train.shape[1],
        "scores_out": str(workdir / f"{model}.npy"), "result_out": str(workdir / f"{model}.json"),
        "checkpoint_dir": str(workdir / "checkpoints"),
    }
    job_path = workdir / f"{model}-job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # RecBole reloads its own pickled checkpoint
    proc = subprocess.run([str(python), str(REPO / "bench" / "recbole_runner.py"), str(job_path)], cwd=workdir,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"RecBole {model} failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:]))
    result = json.loads(Path(job["result_out"]).read_text())
    result["scores"] = np.load(job["scores_out"])
    return result


# ---- the shared evaluation ------------------------------------------------------------------
def top_k_from_scores(scores: np.ndarray, excluded: sp.csr_matrix, k: int) -> np.ndarray:
    s = torch.from_numpy(np.array(scores, dtype=np.float32, copy=True))
    coo = sp.coo_matrix(excluded)
    s[torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))] = -torch.inf
    return torch.topk(s, k, dim=1).indices.numpy()


def same_footing_report(split, ranked: np.ndarray) -> dict[str, float]:
    from trainer.metrics import ranking_report

    return ranking_report(ranked, split.test.targets, ks=KS, n_items=split.train.shape[1])


def our_ranked(model, split) -> np.ndarray:
    """Our model's top 100 from each user's train row, train (seen) and validation items excluded."""
    users = np.arange(split.train.shape[0])
    ids, _ = model.recommend(split.train, k=max(KS), users=users, exclude=split.valid.targets,
                             timestamps=split.train_timestamps)
    return ids


# ---- our side -------------------------------------------------------------------------------
def timings(log: dict) -> dict:
    curve = log.get("curve", [])
    train_s = [p["seconds"] for p in curve if "seconds" in p]
    fit_s = float(log["fit_seconds"])
    epochs, best = int(log.get("epochs", 0)), int(log.get("best_epoch", 0))
    valid_each = (fit_s - sum(train_s)) / epochs if epochs else 0.0  # validation is in fit_seconds, not in the curve
    to_best = sum(train_s[:best]) + best * valid_each if epochs else fit_s
    return {"fit_seconds": fit_s, "train_seconds_per_epoch": float(np.mean(train_s)) if train_s else 0.0,
            "epochs": epochs, "best_epoch": best, "seconds_to_best": to_best}


def fit_ours(name: str, split, seed: int, epochs: int | None, patience: int | None,
             precision: str = "fp32") -> tuple[object, dict]:
    from models import REGISTRY
    import trainer

    cls = REGISTRY[name]
    hyper = {} if cls.closed_form else {k: v for k, v in (("epochs", epochs), ("patience", patience)) if v is not None}
    model, log = trainer.fit(name, split.train, timestamps=split.train_timestamps, valid=split.valid, seed=seed, progress=False,
                             precision=precision, **hyper)
    return model, timings(log)


def recbole_columns(python: Path, name: str, split, workdir: Path, args) -> dict:
    """RecBole's counterpart of our ``name`` on the same split, with the same stopping rule:
    its run and its test lists scored by our metric code, as the table's RecBole columns."""
    from models import REGISTRY

    cfg = REGISTRY[name].Config()
    epochs = args.epochs or int(getattr(cfg, "epochs", 1))
    patience = args.patience or int(getattr(cfg, "patience", 10) or 10)
    print(f"  RecBole {RECBOLE[name]} ...", flush=True)
    rb = run_recbole(python, RECBOLE[name], split, workdir, epochs, patience, args.seed)
    scores = rb.pop("scores")
    excluded = (split.train + split.valid.targets).tocsr()
    report = same_footing_report(split, top_k_from_scores(scores, excluded, max(KS)))
    return dict(recbole=rb, recbole_ndcg100=float(report["ndcg@100"]), recbole_own_ndcg100=rb["recbole_test"].get("ndcg@100"),
                rb_fit_seconds=rb["fit_seconds"], rb_train_seconds_per_epoch=rb["train_seconds_per_epoch"],
                rb_epochs=rb["epochs"], rb_best_epoch=rb["best_epoch"], rb_setup_seconds=rb["setup_seconds"])


def rating_row(name: str, split, seed: int, epochs: int | None, patience: int | None) -> dict:
    import trainer
    from trainer.evaluation import evaluate_rating

    hyper = {k: v for k, v in (("epochs", epochs), ("patience", patience)) if v is not None}
    model, log = trainer.fit(name, split.train, valid=split.valid, seed=seed, progress=False,
                             rating_range=split.rating_range, **hyper)
    report = evaluate_rating(model, split.train, split.test, fallback=None)
    return {"model": name, "protocol": "rating-random", **timings(log), "test_rmse": float(report["rmse"])}


# ---- report -----------------------------------------------------------------------------------
def plot(rows: list[dict], title: str) -> None:
    plt = pyplot()
    ranked = [r for r in rows if r.get("ours_ndcg100") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(ranked))
    ax1.bar(x - 0.2, [r["ours"]["fit_seconds"] for r in ranked], 0.4, label="aerec")
    ax1.bar(x + 0.2, [r["recbole"]["fit_seconds"] if r.get("recbole") else 0 for r in ranked], 0.4, label="RecBole 1.2.1")
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds to fit (log)")
    ax2.bar(x - 0.2, [r["ours_ndcg100"] for r in ranked], 0.4, label="aerec")
    ax2.bar(x + 0.2, [r.get("recbole_ndcg100") or 0 for r in ranked], 0.4, label="RecBole 1.2.1")
    ax2.set_ylabel("test NDCG@100 (same split, same code)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [f"{r['model']} {r['precision']}" for r in ranked], rotation=30)
        ax.legend(fontsize="small")
    ax1.set_title(title, fontsize="small")
    save_figure("training", fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="'all' or a comma-separated list of our models")
    parser.add_argument("--epochs", type=int, default=None, help="cap both sides' epochs (quick runs)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience of both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-recbole", action="store_true", help="time our models only")
    parser.add_argument("--precision", default="fp32,bf16",
                        help="our training precisions, each a row of its own (bf16: models that allow it; RecBole: fp32)")
    args = parser.parse_args(argv)
    from trainer.training import PRECISIONS

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - set(PRECISIONS):
        parser.error(f"--precision takes {' and/or '.join(PRECISIONS)}, got {args.precision!r}")
    # torch imports its compiler stack (~0.7 s) the first time an optimiser is built; RecBole's
    # runner does this import before its clock too, so neither side's first fit pays for it.
    import torch._dynamo  # noqa: F401

    from interactions.datasets import get_dataset
    from models import REGISTRY
    from trainer.evaluation import evaluate_ranking
    from trainer.protocols import make_split

    names = list(REGISTRY) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    started = time.perf_counter()
    inter = get_dataset("ml-100k", source=ML100K, progress=False)
    ranking = make_split("seed-ranking", inter, seed=args.seed)
    rating = make_split("rating-random", inter, seed=args.seed)
    try:
        python = None if args.no_recbole else ensure_recbole_venv()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="aerec-recbole-") as tmp:
        for name in names:
            cls = REGISTRY[name]
            if cls.task == "rating":
                print(f"  {name} (rating-random) ...", flush=True)
                rows.append(rating_row(name, rating, args.seed, args.epochs, args.patience))
                continue
            rb_row: dict = {}  # RecBole's columns, the same beside each of our rows for this model
            if python is not None and name in RECBOLE:
                try:
                    rb_row = recbole_columns(python, name, ranking, Path(tmp), args)
                except BenchError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
            for precision in precisions if cls.reduced_precision else ["fp32"]:
                print(f"  {name} ({precision}) ...", flush=True)
                model, ours = fit_ours(name, ranking, args.seed, args.epochs, args.patience, precision)
                row = {"model": name, "precision": precision, "protocol": "seed-ranking", "ours": ours,
                       "ours_ndcg100": same_footing_report(ranking, our_ranked(model, ranking))["ndcg@100"],
                       "ours_ndcg100_foldin": float(evaluate_ranking(model, ranking.test, ks=(100,))["ndcg@100"])}
                row.update({f"ours_{k}": v for k, v in ours.items()})
                if rb_row:
                    rb = rb_row["recbole"]
                    row.update(rb_row, speedup=rb["fit_seconds"] / max(ours["fit_seconds"], 1e-9),
                               speedup_to_best=rb["seconds_to_best"] / max(ours["seconds_to_best"], 1e-9))
                rows.append(row)

    title = (f"ml-100k · seed-ranking seed {args.seed}" + (f" · epochs <= {args.epochs}" if args.epochs else "")
             + (f" · patience {args.patience}" if args.patience else ""))
    print()
    print_table([r for r in rows if r["protocol"] == "seed-ranking"], [
        ("model", "model", ""), ("precision", "precision", ""), ("ours_train_seconds_per_epoch", "s/epoch", ".3f"),
        ("ours_epochs", "epochs", "d"),
        ("ours_best_epoch", "best", "d"), ("ours_fit_seconds", "fit s", ".1f"), ("ours_ndcg100", "NDCG@100", ".4f"),
        ("ours_ndcg100_foldin", "fold-in", ".4f"),
        ("rb_train_seconds_per_epoch", "RB s/epoch", ".3f"), ("rb_epochs", "RB epochs", "d"), ("rb_best_epoch", "RB best", "d"),
        ("rb_fit_seconds", "RB fit s", ".1f"), ("recbole_ndcg100", "RB NDCG@100", ".4f"),
        ("recbole_own_ndcg100", "RB own", ".4f"), ("speedup", "speed-up", ".1f"), ("speedup_to_best", "to best", ".1f"),
    ], title=f"rankers · {title} · RB = RecBole 1.2.1 (RB own: RecBole's evaluator on the same test)")
    rating_rows = [r for r in rows if r["protocol"] == "rating-random"]
    if rating_rows:
        print()
        print_table(rating_rows, [
            ("model", "model", ""), ("train_seconds_per_epoch", "s/epoch", ".3f"), ("epochs", "epochs", "d"),
            ("best_epoch", "best", "d"), ("fit_seconds", "fit s", ".1f"), ("test_rmse", "test RMSE", ".4f"),
        ], title=f"rating models · ml-100k · rating-random seed {args.seed} (no RecBole counterpart)")
    print()
    verdicts = [
        verdict(f"{r['model']} ({r['precision']}) vs RecBole {RECBOLE[r['model']]}",
                r["speedup"] >= SPEEDUP_TARGET and round(r["ours_ndcg100"], 4) >= round(r["recbole_ndcg100"], 4),
                f"{r['speedup']:.1f}x faster (target >= {SPEEDUP_TARGET:g}x), NDCG@100 {r['ours_ndcg100']:.4f} vs "
                f"{r['recbole_ndcg100']:.4f} (target: equal or better)")
        for r in rows if "speedup" in r
    ]
    write_json("training", {
        "bench": "training", "dataset": "ml-100k", "protocol": "seed-ranking", "seed": args.seed,
        "epochs_cap": args.epochs, "patience": args.patience, "precisions": precisions, "machine": machine_info(), "wall_seconds": round(time.perf_counter() - started, 1),
        "results": rows, "targets": verdicts,
    })
    plot(rows, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
