"""Model quality: every model on its protocol(s) over seeds, beside the baselines and the published figures.

    python bench/quality.py [--dataset ml-100k] [--source DIR] [--models autorec-i,ease]
                            [--seeds 0,1,2,3,4] [--protocols rating-random,strong,temporal[,seed-ranking]]
                            [--out bench/out/quality.json] [--threads 1] [--precision bf16]
                            [--set multvae.batch_size=1000 --set multvae.lr=2e-3]

Which model runs where (protocols.md):
  * rating models (autorec-i, autorec-u, deeprec) on ``rating-random``: RMSE, MAE;
    baselines global-mean and bias (bias is also every model's fallback for unknown users/items);
  * rankers (cdae, multvae, recvae, multdae, ease, edlae) on ``strong``: Recall@20, Recall@50, NDCG@100;
    and on ``seed-ranking`` when asked (P@100, R@100, NDCG@100); baseline popularity;
  * svae and multvae on ``temporal`` (the SVAE paper's claim: order helps), baseline popularity.
    svae runs there only: it predicts the items that come NEXT, and the other protocols'
    targets are a random 20% of a user's history, interleaved in time with its input (on
    ``strong``, seeds 0-4: NDCG@100 0.273 ± 0.021 against popularity's 0.261; on ``temporal``
    it beats popularity by a wide margin).
Each fit goes through ``trainer.fit`` with the split's validation part for early stopping,
then is scored once on test. ``--no-valid`` fits as a user of the Python API would, with no
``valid``: ``trainer.fit`` holds out part of its input to choose the epochs and refits on all
of it (``trainer.holdout``); rating models then train on the split's train and validation
parts together (a seeded random 90/10 split), rankers on its train part. The table is mean ± sample std (ddof=1) over seeds, with the
wall time of each fit, training seconds per epoch, and the nearest published figure (same
protocol and metric; the dataset is named where it is not ours). PASS/FAIL lines check
the ml-100k targets; the exit status is 1 when one fails. JSON and a bar chart (.png
beside it) are rewritten after every (seed, protocol), seeds outermost, so an interrupted
run keeps every protocol over the seeds it finished (the "seeds" column says how many).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from errors import UserError  # noqa: E402
from interactions import Interactions  # noqa: E402
from interactions.datasets import get_dataset  # noqa: E402
from trainer.commands.baselines import parse_seeds, write_json  # noqa: E402
from trainer.evaluation import FALLBACK_BASELINE, evaluate_ranking, evaluate_rating, summarise  # noqa: E402
from trainer.hparams import resolve  # noqa: E402
from trainer.protocols import PROTOCOL_METRICS, PROTOCOL_TASK, PROTOCOLS, make_split, protocol_ks  # noqa: E402
from trainer.training import fit, model_class  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"
DEFAULT_PROTOCOLS = ("rating-random", "strong", "temporal")
TEMPORAL_MODELS = ("svae", "multvae")  # the pair whose comparison the temporal protocol exists for
BASELINES_FOR_TASK = {"rating": ("bias", "global-mean"), "ranking": ("popularity",)}  # bias first: the fallback
NO_VALID_RMSE_MARGIN = {"autorec-i": 0.04, "default": 0.02}  # below the bias baseline, fitted with no valid
MAIN_METRIC = {"rating-random": "rmse", "seed-ranking": "ndcg@100", "strong": "ndcg@100", "temporal": "ndcg@100"}


# ---- published figures (published.md); a figure is beside ours only on the same protocol and metric ----
SOURCES = {
    "sedhain15": "Sedhain et al. 2015 (AutoRec), random 90/10 split, 5 repeats, 500 hidden units (± 0.003)",
    "d2l": "d2l.ai AutoRec chapter (seed 003): I-AutoRec test RMSE on ML-100K, on its own single random split",
    "liang18": "Liang et al. 2018 (Mult-VAE), strong generalization, ML-20M, 10K held-out users, ratings >= 4",
    "steck19": "Steck 2019 (EASE), same protocol and data as Liang et al. 2018 (ML-20M)",
    "shenbin20": "Shenbin et al. 2020 (RecVAE), same protocol and data as Liang et al. 2018 (ML-20M)",
    "steck20": "Steck 2020 (EDLAE full rank), strong generalization on MSD (41K items), the author's notebook",
    "sachdeva19": "Sachdeva et al. 2019 (SVAE), ML-1M, ratings > 3, 1.5K held-out users, last 20% by time",
    "seedblog": "transfer-rec Autoencoders-Experiments (seed blog), ML-1M: best epoch picked on test, seen items "
    "not excluded (not honest figures, kept for comparison)",
    "seedblog-svae": "seed blog's SVAE row: measured on its training users (not comparable)",
}


@dataclass(frozen=True)
class Published:
    dataset: str
    protocol: str
    model: str
    metric: str
    value: float
    source: str  # a key of SOURCES


def _rows(dataset: str, protocol: str, source: str, metrics: tuple[str, ...], table: dict) -> list[Published]:
    return [
        Published(dataset, protocol, model, metric, value, source)
        for model, values in table.items()
        for metric, value in zip(metrics, values)
    ]


# Ordered: for a dataset we have no figure on, the first match (ml-1m before ml-20m) is shown.
PUBLISHED: tuple[Published, ...] = (
    *_rows("ml-100k", "rating-random", "d2l", ("rmse",), {"autorec-i": (0.901,)}),
    *_rows("ml-1m", "rating-random", "sedhain15", ("rmse",), {"autorec-i": (0.831,), "autorec-u": (0.874,)}),
    *_rows("ml-10m", "rating-random", "sedhain15", ("rmse",), {"autorec-i": (0.782,), "autorec-u": (0.867,)}),
    *_rows(
        "ml-1m", "seed-ranking", "seedblog", ("precision@100", "recall@100", "ndcg@100"),
        {"cdae": (0.0894, 0.4137, 0.2528), "multvae": (0.0886, 0.4115, 0.2508), "ease": (0.0757, 0.4181, 0.2561)},
    ),
    *_rows("ml-1m", "seed-ranking", "seedblog-svae", ("precision@100", "recall@100", "ndcg@100"),
           {"svae": (0.0818, 0.5850, 0.3807)}),
    *_rows(
        "ml-20m", "strong", "liang18", ("recall@20", "recall@50", "ndcg@100"),
        {"multvae": (0.395, 0.537, 0.426), "multdae": (0.387, 0.524, 0.419), "cdae": (0.391, 0.523, 0.418),
         "popularity": (0.162, 0.235, 0.191)},
    ),
    *_rows("ml-20m", "strong", "steck19", ("recall@20", "recall@50", "ndcg@100"), {"ease": (0.391, 0.521, 0.420)}),
    *_rows("ml-20m", "strong", "shenbin20", ("recall@20", "recall@50", "ndcg@100"), {"recvae": (0.414, 0.553, 0.442)}),
    *_rows("msd", "strong", "steck20", ("recall@20", "recall@50", "ndcg@100"), {"edlae": (0.3341, 0.4295, 0.3915)}),
    *_rows(
        "ml-1m", "temporal", "sachdeva19", ("ndcg@10", "ndcg@100", "recall@10"),
        {"svae": (0.1781, 0.2993, 0.1248), "multvae": (0.1169, 0.2301, 0.0912), "popularity": (0.0424, 0.1130, 0.0341)},
    ),
)


def published_for(dataset: str, protocol: str, model: str, metric: str) -> Published | None:
    """The published figure for this cell: the same dataset if there is one, else the first of another."""
    matches = [p for p in PUBLISHED if (p.protocol, p.model, p.metric) == (protocol, model, metric)]
    return next((p for p in matches if p.dataset == dataset), matches[0] if matches else None)


# ---- runs -------------------------------------------------------------------------------------------
def plan(protocols: list[str], models: list[str]) -> dict[str, list[str]]:
    """{protocol: models to fit there, baselines first}; a protocol with no model of its task is left out."""
    runs = {}
    for protocol in protocols:
        task = PROTOCOL_TASK[protocol]
        chosen = [m for m in models if model_class(m).task == task]
        if protocol == "temporal":
            chosen = [m for m in chosen if m in TEMPORAL_MODELS]
        else:  # a next-items model on random targets: not what it predicts (module docstring)
            chosen = [m for m in chosen if not model_class(m).sequential]
        if chosen:
            runs[protocol] = [*BASELINES_FOR_TASK[task], *chosen]
    return runs


def fit_and_score(name: str, split: Any, protocol: str, seed: int, fallback: Any,
                  precision: str = "fp32", use_valid: bool = True, hyper: dict | None = None) -> tuple[dict, Any]:
    """Fit ``name`` on the split's train part (validation for early stopping; without ``use_valid``,
    ``trainer.fit``'s own holdout), score it on test; ``hyper``: overrides of its config (``--set``)."""
    hyper = hyper or {}
    started = time.perf_counter()
    if PROTOCOL_TASK[protocol] == "rating":
        train = split.train if use_valid else (split.train + split.valid).tocsr()
        model, log = fit(name, train, valid=split.valid if use_valid else None, seed=seed, progress=False,
                         rating_range=split.rating_range, precision=precision, **hyper)
        wall = time.perf_counter() - started
        metrics = evaluate_rating(model, train, split.test, fallback=model if fallback is None else fallback)
    else:
        model, log = fit(name, split.train, valid=split.valid if use_valid else None, timestamps=split.train_timestamps,
                         seed=seed, progress=False, precision=precision, **hyper)
        wall = time.perf_counter() - started
        metrics = evaluate_ranking(model, split.test, ks=protocol_ks(protocol))
    epoch_seconds = [point["seconds"] for point in log["curve"] if "seconds" in point]
    timing = {
        "fit_seconds": wall,
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else None,  # training only
        "epochs": int(log.get("epochs", 0)),
        "best_epoch": int(log.get("best_epoch", 0)),
    }
    return {"metrics": metrics, **timing}, model


def run_seed(interactions: Interactions, protocol: str, names: list[str], seed: int,
             precision: str = "fp32", use_valid: bool = True, overrides: dict | None = None) -> dict[str, dict]:
    """{model: outcome} of every model on one seed's split of ``protocol``."""
    split = make_split(protocol, interactions, seed)
    fallback, outcomes = None, {}
    for name in names:  # baselines first, so the bias model is the raters' fallback
        outcome, model = fit_and_score(name, split, protocol, seed, fallback, precision, use_valid,
                                       (overrides or {}).get(name))
        if name == FALLBACK_BASELINE and PROTOCOL_TASK[protocol] == "rating":
            fallback = model
        outcomes[name] = outcome
        main = MAIN_METRIC[protocol]
        print(f"  [{protocol} seed {seed}] {name:<12} {main} {outcome['metrics'][main]:.4f}  "
              f"{outcome['fit_seconds']:.1f}s, {outcome['epochs']} epochs (best {outcome['best_epoch']})",
              file=sys.stderr, flush=True)
    return outcomes


def summarise_outcomes(protocol: str, per_model: dict[str, list[dict]]) -> dict:
    """{model: {"metrics": summarise-style, "fit_seconds", "seconds_per_epoch", per-seed "epochs"/"best_epoch"}}."""
    results = {}
    for name, outcomes in per_model.items():
        metrics = summarise({name: {m: [o["metrics"][m] for o in outcomes] for m in outcomes[0]["metrics"]}})[name]
        per_epoch = [o["seconds_per_epoch"] for o in outcomes if o["seconds_per_epoch"] is not None]
        series = {"fit": [o["fit_seconds"] for o in outcomes], **({"epoch": per_epoch} if per_epoch else {})}
        timing = summarise({name: series})[name]
        results[name] = {
            "baseline": name in BASELINES_FOR_TASK[PROTOCOL_TASK[protocol]],
            "metrics": metrics,
            "fit_seconds": timing["fit"],
            "seconds_per_epoch": timing.get("epoch"),  # None: closed form, no epochs
            "epochs": [o["epochs"] for o in outcomes],
            "best_epoch": [o["best_epoch"] for o in outcomes],
        }
    return results


def run_protocol(interactions: Interactions, protocol: str, names: list[str], seeds: list[int]) -> dict:
    """``summarise_outcomes`` of every model on ``protocol`` over ``seeds``."""
    per_model: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        for name, outcome in run_seed(interactions, protocol, names, seed).items():
            per_model[name].append(outcome)
    return summarise_outcomes(protocol, per_model)


# ---- checks (ml-100k targets of issue 4) ----------------------------------------------------------------
def _mean(report: dict, protocol: str, model: str, metric: str) -> float | None:
    try:
        return report["protocols"][protocol]["results"][model]["metrics"][metric]["mean"]
    except KeyError:
        return None


def checks(report: dict) -> list[dict]:
    """[{"check", "status": PASS|FAIL|SKIP, "detail"}] on the means over seeds; only ml-100k has targets."""
    if report["dataset"] != "ml-100k":
        return []
    out: list[dict] = []

    def check(label: str, left: float | None, op: str, right: float | None, detail: str = "") -> None:
        if left is None or right is None:
            out.append({"check": label, "status": "SKIP", "detail": "not run"})
            return
        ok = {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
        out.append({"check": label, "status": "PASS" if ok else "FAIL",
                    "detail": f"{left:.4f}, needs {op} {right:.4f}{detail}"})

    def models_of(protocol: str) -> list[str]:
        results = report["protocols"].get(protocol, {}).get("results", {})
        return [name for name, r in results.items() if not r["baseline"]]

    bias = _mean(report, "rating-random", "bias", "rmse")
    for name in models_of("rating-random"):
        check(f"rating-random RMSE {name} < bias", _mean(report, "rating-random", name, "rmse"), "<", bias)
        if not report.get("valid", True) and bias is not None:  # issue 20: what trainer.fit gives with no valid
            margin = NO_VALID_RMSE_MARGIN.get(name, NO_VALID_RMSE_MARGIN["default"])
            check(f"rating-random RMSE {name} <= bias - {margin} (no valid)", _mean(report, "rating-random", name, "rmse"),
                  "<=", bias - margin)
    check("rating-random RMSE autorec-i <= 0.885", _mean(report, "rating-random", "autorec-i", "rmse"), "<=", 0.885)
    pop = _mean(report, "strong", "popularity", "ndcg@100")
    for name in models_of("strong"):
        check(f"strong NDCG@100 {name} >= popularity + 0.05", _mean(report, "strong", name, "ndcg@100"), ">=",
              None if pop is None else pop + 0.05, f" (popularity {pop:.4f})" if pop is not None else "")
    check("strong NDCG@100 ease >= 0.44", _mean(report, "strong", "ease", "ndcg@100"), ">=", 0.44)
    check("strong NDCG@100 multvae >= 0.43", _mean(report, "strong", "multvae", "ndcg@100"), ">=", 0.43)
    # issue 21: the stronger member of each family at least matches it (same seeds: the mean is the paired mean)
    for stronger, base in (("recvae", "multvae"), ("edlae", "ease")):
        check(f"strong NDCG@100 {stronger} >= {base}", _mean(report, "strong", stronger, "ndcg@100"), ">=",
              _mean(report, "strong", base, "ndcg@100"))
    temporal_pop = _mean(report, "temporal", "popularity", "ndcg@100")
    check("temporal NDCG@100 svae >= popularity + 0.05", _mean(report, "temporal", "svae", "ndcg@100"), ">=",
          None if temporal_pop is None else temporal_pop + 0.05)
    for metric in ("ndcg@100", "recall@10"):
        check(f"temporal {metric} svae > multvae", _mean(report, "temporal", "svae", metric), ">",
              _mean(report, "temporal", "multvae", metric))
    return out


# ---- output -----------------------------------------------------------------------------------------
def _pm(stats: dict | None, digits: int = 4) -> str:
    if stats is None:
        return ""
    if len(stats.get("values", ())) == 1:  # one seed: there is no spread to show
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def format_report(report: dict) -> str:
    """One table: dataset × protocol × model × metric, ours beside the published figure; footnotes below."""
    dataset, seeds = report["dataset"], report["seeds"]  # seeds asked; a row's values are the seeds done
    header = ["dataset", "protocol", "model", "metric", "seeds", "ours", "published", "fit s", "s/epoch", "epochs"]
    rows, notes = [], {}
    for protocol, block in report["protocols"].items():
        for model, result in block["results"].items():
            for i, metric in enumerate(block["metrics"]):
                ref = published_for(dataset, protocol, model, metric)
                cited = ""
                if ref is not None:
                    mark = notes.setdefault(ref.source, chr(ord("a") + len(notes)))
                    where = "" if ref.dataset == dataset else f" {ref.dataset}"
                    cited = f"{ref.value:.4g}{where} [{mark}]"
                first = i == 0  # timings once per model
                rows.append([
                    dataset, protocol, model + (" (baseline)" if result["baseline"] else ""), metric,
                    f"{len(result['metrics'][metric]['values'])}/{len(seeds)}", _pm(result["metrics"][metric]), cited,
                    _pm(result["fit_seconds"], 1) if first else "",
                    _pm(result["seconds_per_epoch"], 2) if first and result["seconds_per_epoch"] else "",
                    f"{np.mean(result['epochs']):.0f}" if first and max(result["epochs"]) else "",
                ])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"seeds: done/asked of {','.join(map(str, seeds))}; ours: mean ± sample std (ddof=1) over them")
    lines.append("fit s: wall seconds of trainer.fit incl. validation; s/epoch: training seconds per epoch; "
                 "epochs: mean epochs run (early stopping)")
    lines += [f"[{mark}] {SOURCES[source]}" for source, mark in notes.items()]
    return "\n".join(lines)


def bar_chart(report: dict, path: Path) -> None:
    """One panel per protocol: each model's main metric (error bar = std over seeds), baselines grey."""
    blocks = report["protocols"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.5 * len(blocks), 3.8), squeeze=False)
    for ax, (protocol, block) in zip(axes[0], blocks.items()):
        metric = MAIN_METRIC[protocol]
        names = list(block["results"])
        stats = [block["results"][n]["metrics"][metric] for n in names]
        colours = ["0.7" if block["results"][n]["baseline"] else "tab:blue" for n in names]
        ax.bar(names, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], color=colours, capsize=3)
        for x, name in enumerate(names):
            ref = published_for(report["dataset"], protocol, name, metric)
            if ref is not None and ref.dataset == report["dataset"]:
                ax.plot(x, ref.value, "kx", markersize=8)  # a published figure on this very dataset
        if PROTOCOL_TASK[protocol] == "rating":  # errors differ by a few percent: start the axis near them
            low = min(s["mean"] - s["std"] for s in stats)
            ax.set_ylim(bottom=0.9 * low)
        ax.set_ylabel(metric)
        done = block.get("seeds_done", report["seeds"])
        ax.set_title(f"{report['dataset']} · {protocol} · seeds {','.join(map(str, done))}", fontsize="medium")
        ax.tick_params(axis="x", labelrotation=45)
    fig.suptitle("mean ± std over seeds (grey: baselines, x: published on this dataset)", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------
def _names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise UserError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    from models import REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="a MovieLens dataset by name (ml-100k, ml-1m, ...)")
    parser.add_argument("--source", type=Path, default=None,
                        help="local folder or .zip of the dataset (default for ml-100k: ../shared/data/ml-100k)")
    parser.add_argument("--models", default=",".join(REGISTRY), help="comma-separated subset of the models")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split/training seeds")
    parser.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS), help=f"from {', '.join(PROTOCOLS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/out/quality.json"), help="JSON to write (.png beside)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--precision", default="fp32", help="training precision: fp32, or bf16 (trainer --precision)")
    parser.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                        help="a hyper-parameter override, as `trainer train --set` (repeatable)")
    parser.add_argument("--no-valid", action="store_true",
                        help="fit with no valid, as the Python API's default: trainer.fit's own holdout picks the epochs")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))  # on a shared machine, fewer threads thrash less
    try:
        models = _names(args.models, list(REGISTRY), "model(s)")
        protocols = _names(args.protocols, PROTOCOLS, "protocol(s)")
        seeds = parse_seeds(args.seeds)
        overrides = resolve(None, args.set, {name: cls.Config for name, cls in REGISTRY.items()})
        source = args.source
        if source is None and args.dataset == "ml-100k" and (SHARED_ML100K / "u.data").is_file():
            source = SHARED_ML100K
        interactions = get_dataset(args.dataset, source=source, progress=False)
        report: dict[str, Any] = {
            "dataset": args.dataset, "seeds": seeds, "models": models, "valid": not args.no_valid, "overrides": overrides,
            "std": "sample standard deviation over seeds (ddof=1)",
            "environment": {
                "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
                "precision": args.precision,
            },
            "published": [asdict(p) | {"source_text": SOURCES[p.source]} for p in PUBLISHED],
            "protocols": {},
        }
        started = time.perf_counter()
        runs = plan(protocols, models)
        if not runs:
            raise UserError(f"none of the models {', '.join(models)} runs on {', '.join(protocols)}")
        outcomes = {protocol: {name: [] for name in names} for protocol, names in runs.items()}
        # Seeds outermost: an interrupted run still has every protocol, over the seeds it finished.
        for seed in seeds:
            for protocol, names in runs.items():
                print(f"{args.dataset} · {protocol} · seed {seed}: {', '.join(names)}", file=sys.stderr, flush=True)
                protocol_started = time.perf_counter()
                for name, outcome in run_seed(interactions, protocol, names, seed, args.precision,
                                              use_valid=not args.no_valid, overrides=overrides).items():
                    outcomes[protocol][name].append(outcome)
                block = report["protocols"].setdefault(
                    protocol, {"metrics": list(PROTOCOL_METRICS[protocol]), "seeds_done": [], "seconds": 0.0}
                )
                block["seeds_done"].append(seed)
                block["seconds"] += time.perf_counter() - protocol_started
                block["results"] = summarise_outcomes(protocol, outcomes[protocol])
                report["checks"] = checks(report)
                write_json(report, args.out)  # after every seed: an interrupted run keeps what it did
                bar_chart(report, args.out.with_suffix(".png"))
        report["seconds"] = time.perf_counter() - started
        write_json(report, args.out)
    except UserError as exc:  # DataError is a UserError too: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print()
    for result in report["checks"]:
        print(f"{result['status']}  {result['check']}: {result['detail']}")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({report['seconds']:.0f} s)")
    return 1 if any(c["status"] == "FAIL" for c in report["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
