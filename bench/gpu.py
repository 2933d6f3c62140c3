"""Training and scoring speed at ML-20M scale, every figure against a plain-PyTorch floor measured in the same run.

    python bench/gpu.py                              # on a GPU: the ML-20M shape (140,000 x 20,000, 20M interactions)
    python bench/gpu.py --scale 0.05 --device cpu    # the same measurements on a CPU, on a smaller set
    python bench/gpu.py --train-all                  # also the wall time of `python -m trainer train --models all`

Data: ``trainer.synthetic.generate`` with ML-20M's shape; ``--scale s`` multiplies users and
interactions by s and items by sqrt(s) (density grows by 1/sqrt(s): 3% at 0.05, ml-100k has 6%).
Rankers train on the ``strong`` split's train matrix, every interaction a positive, and are
validated on its held-out users (10,000 x s per side); rating models on ``rating-random``.

Per model: seconds per training epoch (median of the epochs after the first, which pays for
moving the data to the device and the kernels' first launches), validation seconds (NDCG@100
on the held-out users, or RMSE), EASE's fit, users scored per second (top 100, seen items
excluded, every training user), peak device memory. The floors, a few lines of plain PyTorch
each, written here so nothing of the project's code is in them:
  * a Mult-VAE [I-600-200-600-I] epoch, X's CSR arrays on the device and each batch densified there;
  * X^T X from dense row blocks (bfloat16 with float32 output on a GPU) plus a Cholesky inverse;
  * scoring: the floor Mult-VAE's forward pass and top-100 over every user, in blocks.
Each figure is printed with its ratio to its floor (1.0 = as fast as the floor); JSON and PNG go
to ``bench/out/gpu.json`` and ``gpu.png``. The targets of issue 22 are PASS/FAIL lines on a GPU at
scale 1; elsewhere they are not judged.

It needs torch, numpy, scipy, pandas, matplotlib and tqdm, none of the service's packages
(tests/bench/test_gpu_bench.py runs it with them unimportable); ``--train-all`` runs the
trainer's CLI, which also needs pydantic and pydantic-settings (bench/RESULTS.md, "On a GPU").
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, machine_info, print_table, pyplot, save_figure, verdict, write_json  # noqa: E402

RANKERS = ["multvae", "multdae", "recvae", "cdae", "ease", "svae"]
RATING_MODELS = ["autorec-u", "autorec-i", "deeprec"]
K = 100
# Timing variants beyond each model's defaults: (label, model, overrides, precision).
VARIANTS = [
    ("multvae bf16", "multvae", {}, "bf16"),
    ("multvae b4096", "multvae", {"batch_size": 4096}, "fp32"),
    ("multvae b4096 bf16", "multvae", {"batch_size": 4096}, "bf16"),
    ("multvae b24576 bf16", "multvae", {"batch_size": 24576}, "bf16"),
    ("multdae bf16", "multdae", {}, "bf16"),
    ("multdae b4096 bf16", "multdae", {"batch_size": 4096}, "bf16"),
    ("cdae bf16", "cdae", {}, "bf16"),
    ("recvae bf16", "recvae", {}, "bf16"),
    ("autorec-u bf16", "autorec-u", {}, "bf16"),
    ("autorec-i bf16", "autorec-i", {}, "bf16"),
    ("deeprec bf16", "deeprec", {}, "bf16"),
    ("svae bf16", "svae", {}, "bf16"),
    ("svae b256", "svae", {"batch_size": 256}, "fp32"),
]
# issue 22's targets on one H100/H200 at the ML-20M shape: seconds (at most) or users/s (at least)
EPOCH_TARGETS = {"multvae": 0.4, "multdae": 0.4, "cdae": 1.0, "autorec-u": 1.0, "autorec-i": 1.0, "deeprec": 1.0, "svae": 5.0}
LARGE_BATCH_TARGET = 0.15
EASE_FIT_TARGET = 2.0
SCORING_TARGET = 1_000_000
TRAIN_ALL_TARGET_S = 20 * 60


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - started, out


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---- the floors: plain PyTorch, nothing of the project's ----------------------------------------
def floor_multvae(X: sp.csr_matrix, device: torch.device, epochs: int, batch_size: int = 500) -> tuple[float, nn.Module]:
    """Median seconds of a minimal Mult-VAE epoch after the first, and the trained network."""
    torch.manual_seed(0)
    indptr = torch.from_numpy(X.indptr.astype(np.int64)).to(device)
    indices = torch.from_numpy(X.indices.astype(np.int64)).to(device)
    n, m = X.shape
    encoder = nn.Sequential(nn.Linear(m, 600), nn.Tanh(), nn.Linear(600, 400)).to(device)
    decoder = nn.Sequential(nn.Linear(200, 600), nn.Tanh(), nn.Linear(600, m)).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)

    def dense(rows: torch.Tensor) -> torch.Tensor:
        starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        x = torch.zeros(len(rows), m, device=device)
        x[row_of, indices[torch.arange(len(row_of), device=device) - offsets[row_of] + starts[row_of]]] = 1.0
        return x

    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for rows in torch.randperm(n, device=device).split(batch_size):
            x = dense(rows)
            mu, logvar = encoder(F.dropout(F.normalize(x), 0.5)).chunk(2, dim=1)
            logits = decoder(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
            kl = (0.5 * (-logvar + logvar.exp() + mu.pow(2) - 1)).sum(1).mean()
            loss = -(F.log_softmax(logits, 1) * x).sum(1).mean() + 0.2 * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        seconds.append(time.perf_counter() - started)
    network = nn.ModuleDict({"encoder": encoder, "decoder": decoder}).eval()
    network.dense = dense
    return statistics.median(seconds[1:]), network


def floor_scoring(network: nn.Module, n_users: int, device: torch.device, block: int) -> float:
    """Users per second of the floor network's forward pass plus top-100, every user, in blocks."""
    with torch.no_grad():
        def run() -> None:
            for rows in torch.arange(n_users, device=device).split(block):
                x = network.dense(rows)
                mu, _ = network["encoder"](F.normalize(x)).chunk(2, dim=1)
                scores = network["decoder"](mu).masked_fill_(x > 0, -torch.inf)
                torch.topk(scores, K, dim=1)

        run()  # warm-up
        seconds, _ = timed(device, run)
    return n_users / seconds


def floor_gram_solve(X: sp.csr_matrix, device: torch.device, lam: float = 500.0) -> float:
    """Seconds of X^T X from dense row blocks plus a float32 Cholesky inverse (EASE's P)."""
    indptr = torch.from_numpy(X.indptr.astype(np.int64)).to(device)
    indices = torch.from_numpy(X.indices.astype(np.int64)).to(device)
    n, m = X.shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    block = max(1, (1 << 29) // m)

    def solve() -> torch.Tensor:
        G = torch.zeros(m, m, device=device)
        for start in range(0, n, block):
            stop = min(start + block, n)
            lo, hi = int(X.indptr[start]), int(X.indptr[stop])
            row_of = torch.repeat_interleave(torch.arange(stop - start, device=device), indptr[start + 1 : stop + 1] - indptr[start:stop])
            x = torch.zeros(stop - start, m, dtype=dtype, device=device)
            x[row_of, indices[lo:hi]] = 1
            G += torch.mm(x.T, x, out_dtype=torch.float32) if device.type == "cuda" else x.T @ x
        G.diagonal().add_(lam)
        return torch.cholesky_inverse(torch.linalg.cholesky(G))

    seconds, _ = timed(device, solve)
    return seconds


# ---- the project's models --------------------------------------------------------------------
def fit_and_time(name: str, data: dict, device: torch.device, epochs: int, precision: str = "fp32", **overrides) -> dict:
    import trainer
    from models.base import Recommender
    from trainer.training import validation_score

    train = data["rating_train"] if name in RATING_MODELS else data["train"]
    timestamps = data["train_timestamps"] if name == "svae" else None
    valid = data["rating_valid"] if name in RATING_MODELS else data["valid"]
    reset_peak(device)
    closed_form = name == "ease"
    hyper = overrides if closed_form else {"epochs": epochs, **overrides}
    seconds, (model, log) = timed(device, lambda: trainer.fit(
        name, train, timestamps=timestamps, seed=0, device=device, progress=False, precision=precision, holdout=0,
        **hyper))
    model: Recommender
    row: dict[str, Any] = {"fit_s": seconds, "peak_gib": peak_memory_gib(device), "precision": log["precision"]}
    if not closed_form:
        row["epoch_s"] = statistics.median(point["seconds"] for point in log["curve"][1:])
        row["first_epoch_s"] = log["curve"][0]["seconds"]
    validation_score(model, train, valid)  # warm-up
    row["valid_s"], (metric, value, _) = timed(device, lambda: validation_score(model, train, valid))
    row[metric] = value
    if model.task == "ranking":
        n = train.shape[0]
        model.recommend(train[:1000], k=K, timestamps=None if timestamps is None else timestamps[:1000])  # warm-up
        row["score_s"], _ = timed(device, lambda: model.recommend(train, k=K, timestamps=timestamps))
        row["users_per_s"] = n / row["score_s"]
    return row


def ease_scoring_variants(data: dict, device: torch.device) -> list[dict]:
    """EASE's users/s and validation NDCG@100 with its scores computed four ways: the model's own
    path (sparse x @ B in B's dtype), and dense x @ B in float32, in TF32 and in bfloat16."""
    import trainer
    from trainer.metrics import ndcg_at_k

    model, log = trainer.fit("ease", data["train"], device=device, progress=False)
    B = model.B.float()
    inputs, targets = data["valid"].inputs, data["valid"].targets
    evaluated = np.flatnonzero(targets.getnnz(axis=1) > 0)
    inputs, targets = inputs[evaluated], targets[evaluated]
    rows = []
    tf32 = torch.backends.cuda.matmul.allow_tf32

    def dense_path(dtype: torch.dtype) -> Callable[[sp.csr_matrix], np.ndarray]:
        weights = B.to(dtype)

        def rank(X: sp.csr_matrix) -> np.ndarray:
            from models.rows import DeviceRows

            on_device = DeviceRows(X, device, binary=True)
            block = max(2048, (1 << 28) // X.shape[1])
            out = []
            for start in range(0, X.shape[0], block):
                batch = on_device.between(start, min(start + block, X.shape[0]))
                scores = (batch.dense(dtype) @ weights).float()
                scores[batch.row_of, batch.col] = -torch.inf
                out.append(torch.topk(scores, K, dim=1).indices)
            return torch.cat(out).cpu().numpy()

        return rank

    paths = [(f"the model's (sparse x @ B, {str(model.B.dtype).removeprefix('torch.')})", lambda X: model.recommend(X, k=K)[0], False),
             ("dense float32", dense_path(torch.float32), False),
             ("dense TF32", dense_path(torch.float32), True),
             ("dense bfloat16", dense_path(torch.bfloat16), False)]
    for label, rank, allow_tf32 in paths:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        try:
            rank(data["train"][:1000])
            seconds, _ = timed(device, lambda: rank(data["train"]))
            ranked = rank(inputs)
            rows.append({"path": label, "users_per_s": data["train"].shape[0] / seconds,
                         "ndcg@100": float(ndcg_at_k(ranked, targets, K).mean())})
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows


# ---- data ------------------------------------------------------------------------------------
def make_data(scale: float, seed: int = 0) -> dict:
    from trainer.protocols import make_split
    from trainer.synthetic import generate

    n_users, n_items, n_inter = round(140_000 * scale), round(20_000 * math.sqrt(scale)), round(20_000_000 * scale)
    started = time.perf_counter()
    interactions = generate(n_users, n_items, n_inter, seed=seed)
    # every interaction a positive (min_rating 1): the rankers train on ~20M x 0.86 clicks, as the targets assume
    strong = make_split("strong", interactions, seed, n_heldout=max(10, round(10_000 * scale)), min_rating=1.0)
    rating = make_split("rating-random", interactions, seed)
    print(f"data: {n_users:,} users x {n_items:,} items, {n_inter:,} interactions; strong train "
          f"{strong.train.shape[0]:,} users; made and split in {time.perf_counter() - started:.1f} s", flush=True)
    return {"interactions": interactions, "train": strong.train, "train_timestamps": strong.train_timestamps,
            "valid": strong.valid, "rating_train": rating.train, "rating_valid": rating.valid,
            "shape": (n_users, n_items, n_inter)}


def train_all(scale: float, device: str, timeout_s: float, log_path: Path) -> dict:
    """Wall time of `python -m trainer train --models all` on the synthetic set written by
    `trainer data synthetic`; the trainer's output goes to ``log_path`` (kept when it is stopped)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATA_DIR": f"{tmp}/data", "ARTIFACTS_DIR": f"{tmp}/artifacts", "PYTHONUNBUFFERED": "1"}
        parquet = f"{tmp}/synthetic.parquet"
        n_users, n_items, n_inter = round(140_000 * scale), round(20_000 * math.sqrt(scale)), round(20_000_000 * scale)
        command = [sys.executable, "-m", "trainer", "train", "--file", parquet, "--models", "all", "--device", device,
                   "--no-progress"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            subprocess.run([sys.executable, "-m", "trainer", "data", "synthetic", "--out", parquet, "--users", str(n_users),
                            "--items", str(n_items), "--interactions", str(n_inter)],
                           check=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            started = time.perf_counter()
            try:
                code = subprocess.run(command, cwd=REPO, env=env, timeout=timeout_s, stdout=log, stderr=subprocess.STDOUT).returncode
                finished = True
            except subprocess.TimeoutExpired:
                finished, code = False, None
            seconds = time.perf_counter() - started
    print(log_path.read_text()[-4000:], flush=True)
    return {"command": " ".join(command[1:]), "scale": scale, "seconds": seconds, "finished": finished, "exit_code": code}


# ---- the run ---------------------------------------------------------------------------------
def guarded(label: str, fn: Callable[[], Any], errors: dict) -> Any:
    """Run one measurement; a failure is recorded and printed, and the run goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one broken measurement must not lose the others
        errors[label] = f"{type(exc).__name__}: {exc}"
        print(f"ERROR {label}: {errors[label]}\n{traceback.format_exc(limit=4)}", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M's users and interactions (items: its square root)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--models", default=",".join(RANKERS + RATING_MODELS), help="comma-separated models")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs timed per model (the first is not counted)")
    parser.add_argument("--no-variants", action="store_true", help="skip the bf16 and large-batch variants")
    parser.add_argument("--train-all", action="store_true", help="also time `python -m trainer train --models all`")
    parser.add_argument("--train-all-scale", type=float, default=None, help="--scale of the --train-all run (default: --scale)")
    parser.add_argument("--train-all-timeout", type=float, default=3600.0, help="seconds before --train-all is stopped")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop --train-all once the whole bench has run this long (a lent machine's time)")
    parser.add_argument("--name", default="gpu", help="output name under bench/out/")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not counted)")
    from models.scoring import use_tensor_cores
    from trainer.training import resolve_device

    device = resolve_device(args.device)
    use_tensor_cores(device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(RANKERS + RATING_MODELS))
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)}")
    judged = device.type == "cuda" and args.scale == 1.0
    errors: dict[str, str] = {}
    data = make_data(args.scale)
    train = data["train"]
    results: dict[str, Any] = {"bench": "gpu", "machine": machine_info(), "device": str(device), "scale": args.scale,
                               "shape": data["shape"], "epochs": args.epochs, "errors": errors}

    def save() -> None:
        write_json(args.name, results)

    floor_epoch, network = guarded("floor multvae", lambda: floor_multvae(train, device, args.epochs), errors) or (None, None)
    floor_users = guarded("floor scoring", lambda: floor_scoring(network, train.shape[0], device, max(2048, (1 << 28) // train.shape[1])), errors) if network is not None else None
    floor_gram = guarded("floor gram", lambda: floor_gram_solve(train, device), errors)
    results["floors"] = {"multvae_epoch_s": floor_epoch, "scoring_users_per_s": floor_users, "gram_solve_s": floor_gram}
    print(f"floors: Mult-VAE epoch {floor_epoch} s, scoring {floor_users} users/s, Gram + Cholesky inverse {floor_gram} s", flush=True)
    del network
    save()

    # SVAE last: the slowest and least certain, so a lent machine's time runs out on it, not on the rest
    rows, variant_rows = [], []
    variants = [] if args.no_variants else [v for v in VARIANTS if v[1] in models]
    tasks = ([("model", name, name, {}, "fp32") for name in models if name != "svae"]
             + [("ease scoring", "ease", "ease", {}, "fp32")] * ("ease" in models)
             + [("variant", *variant) for variant in variants if variant[1] != "svae"]
             + [("model", "svae", "svae", {}, "fp32")] * ("svae" in models)
             + [("variant", *variant) for variant in variants if variant[1] == "svae"])
    for kind, label, name, overrides, precision in tasks:
        if kind == "ease scoring":
            results["ease_scoring"] = guarded("ease scoring variants", lambda: ease_scoring_variants(data, device), errors)
            save()
            continue
        row = guarded(label, lambda: fit_and_time(name, data, device, args.epochs, precision, **overrides), errors)
        if row is not None:
            (rows if kind == "model" else variant_rows).append({"model": label, **row})
            print(f"{label}: {row}", flush=True)
        results["models"], results["variants"] = rows, variant_rows
        save()

    for row in [*rows, *results.get("variants", [])]:
        if floor_epoch and row.get("epoch_s"):
            row["epoch_x_floor"] = row["epoch_s"] / floor_epoch
        if floor_gram and row["model"] == "ease":
            row["fit_x_floor"] = row["fit_s"] / floor_gram
        if floor_users and row.get("users_per_s"):
            row["scoring_x_floor"] = row["users_per_s"] / floor_users
    columns = [("model", "model", ""), ("epoch_s", "s/epoch", ".3f"), ("epoch_x_floor", "x floor", ".2f"),
               ("first_epoch_s", "1st epoch s", ".2f"), ("fit_s", "fit s", ".2f"), ("fit_x_floor", "fit x floor", ".2f"),
               ("valid_s", "valid s", ".3f"), ("ndcg@100", "ndcg@100", ".4f"), ("rmse", "rmse", ".4f"),
               ("users_per_s", "users/s", ",.0f"), ("scoring_x_floor", "x floor", ".2f"), ("peak_gib", "peak GiB", ".1f")]
    n_users, n_items, n_inter = data["shape"]
    title = (f"training and scoring · {device} · {n_users:,} x {n_items:,}, {n_inter:,} interactions · "
             f"floors: Mult-VAE epoch {floor_epoch or float('nan'):.3f} s, Gram + inverse {floor_gram or float('nan'):.2f} s, "
             f"scoring {floor_users or float('nan'):,.0f} users/s")
    results["table"] = print_table(rows + results.get("variants", []), columns, title)
    if results.get("ease_scoring"):
        print_table(results["ease_scoring"], [("path", "EASE scores", ""), ("users_per_s", "users/s", ",.0f"),
                                              ("ndcg@100", "ndcg@100", ".4f")])

    if args.train_all:
        timeout = args.train_all_timeout
        if args.budget_s is not None:
            timeout = min(timeout, args.budget_s - (time.perf_counter() - started))
        scale = args.scale if args.train_all_scale is None else args.train_all_scale
        log_path = REPO / "bench" / "out" / f"{args.name}-train-all.log"
        results["train_all"] = guarded("train all", lambda: train_all(scale, str(device), timeout, log_path), errors)
        if results["train_all"]:
            print(f"trainer train --models all: {results['train_all']['seconds']:.0f} s "
                  f"({'finished' if results['train_all']['finished'] else 'stopped at the timeout'})", flush=True)
    results["verdicts"] = judge(rows, results.get("variants", []), results.get("train_all")) if judged else []
    if not judged:
        print("targets not judged: they are set for one H100/H200 at --scale 1", flush=True)
    plot(rows + results.get("variants", []), floor_epoch, title, args.name)
    save()
    if errors:
        print(f"{len(errors)} measurement(s) failed: {', '.join(errors)}", flush=True)
    return 1 if errors else 0


def judge(rows: list[dict], variants: list[dict], train_all_result: dict | None) -> list[dict]:
    by_name = {row["model"]: row for row in rows}
    out = []
    for name, target in EPOCH_TARGETS.items():
        if name in by_name and "epoch_s" in by_name[name]:
            out.append(verdict(f"{name} epoch <= {target} s", by_name[name]["epoch_s"] <= target, f"{by_name[name]['epoch_s']:.3f} s"))
    large = [v for v in variants if "bf16" in v["model"] and " b" in v["model"] and "epoch_s" in v]
    for v in large:
        out.append(verdict(f"{v['model']} epoch <= {LARGE_BATCH_TARGET} s", v["epoch_s"] <= LARGE_BATCH_TARGET, f"{v['epoch_s']:.3f} s"))
    if "ease" in by_name:
        out.append(verdict(f"ease fit <= {EASE_FIT_TARGET} s", by_name["ease"]["fit_s"] <= EASE_FIT_TARGET, f"{by_name['ease']['fit_s']:.2f} s"))
    for name in ("multvae", "ease"):
        if name in by_name and "users_per_s" in by_name[name]:
            out.append(verdict(f"{name} scoring >= {SCORING_TARGET:,} users/s", by_name[name]["users_per_s"] >= SCORING_TARGET,
                               f"{by_name[name]['users_per_s']:,.0f} users/s"))
    if train_all_result and train_all_result["scale"] == 1.0:
        out.append(verdict(f"trainer train --models all <= {TRAIN_ALL_TARGET_S // 60} min",
                           train_all_result["finished"] and train_all_result["exit_code"] == 0
                           and train_all_result["seconds"] <= TRAIN_ALL_TARGET_S, f"{train_all_result['seconds']:.0f} s"))
    return out


def plot(rows: list[dict], floor_epoch: float | None, title: str, name: str) -> None:
    plt = pyplot()
    timed_rows = [row for row in rows if row.get("epoch_s")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(timed_rows), 4) + 1.5))
    labels = [row["model"] for row in timed_rows]
    axes[0].barh(labels, [row["epoch_s"] for row in timed_rows], color="tab:blue")
    if floor_epoch:
        axes[0].axvline(floor_epoch, color="black", linestyle="--", label=f"floor: plain Mult-VAE epoch {floor_epoch:.3f} s")
        axes[0].legend(loc="best")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("seconds per training epoch (log)")
    axes[0].invert_yaxis()
    scored = [row for row in rows if row.get("users_per_s")]
    axes[1].barh([row["model"] for row in scored], [row["users_per_s"] for row in scored], color="tab:green")
    axes[1].set_xlabel("users scored per second, top 100")
    axes[1].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    save_figure(name, fig)


if __name__ == "__main__":
    sys.exit(main())
