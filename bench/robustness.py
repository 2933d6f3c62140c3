"""Robustness of the defaults: every model beside its task's baselines on data it was never tuned on.

    python bench/robustness.py [--variants full,40%,15%,binary,synthetic] [--models autorec-i,ease,...]
                               [--seeds 0,1,2] [--tune] [--tune-budget 60s] [--tune-seeds 0]
                               [--threads 1] [--out bench/out/robustness.json]

Every default in ``models/`` was chosen on ml-100k, so this bench fits the models with their
defaults (early stopping on the split's validation part, as ``trainer train`` does) on variants
of it and on the synthetic set, with ``bench/quality.py``'s runs and protocols:

  * ``full``: ml-100k as it is;
  * ``40%``, ``15%``: a seeded subsample of its ratings (users and items left with none dropped),
    the densities a small deployment starts from;
  * ``binary``: every rating a click (the implicit scale: each interaction a positive), so only
    the rankers run;
  * ``synthetic``: ``trainer.synthetic.generate`` at 2,000 users x 1,500 items x 100,000 ratings
    (Zipf popularity, log-normal activity: another shape than MovieLens'). It has no taste to
    learn: items are drawn by popularity alone and a rating is user bias + item bias + noise, so
    the baselines are the best answer there; the check is that no model falls more than
    ``SYNTHETIC_TOLERANCE`` below its baseline (a model that invents structure is the bug).

Rating models run on ``rating-random`` against the bias baseline, rankers on ``strong`` against
popularity. The criteria (issue 21): each rating model's mean RMSE below the bias baseline's, each
ranker's mean NDCG@100 at least ``RANKER_OVER_POPULARITY`` x popularity's (on ``synthetic``: within
``SYNTHETIC_TOLERANCE`` of the baseline).

``--tune`` adds the tuned column: on each ``--tune-seeds`` split every model is searched as
``trainer train --tune`` does (``trainer.tune.tune_model``: TPE from the defaults, median pruning,
on the split's validation part) for ``--tune-budget`` of search per model, and its best trial
scored on test. Criterion (issue 21): every neural ranker's tuned NDCG@100 at least
``NEURAL_OVER_TUNED_EASE`` x the tuned EASE's (not on ``synthetic``, where nothing has taste to
find). A budget shorter than one fit leaves the defaults (the search's first trial). The table and the
PASS/FAIL lines print at the end; JSON (and a PNG of NDCG@100 / RMSE relative to the baseline)
are rewritten after every variant. Exit status 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, pyplot  # noqa: E402
from bench.quality import BASELINES_FOR_TASK, SHARED_ML100K, _names, plan, run_seed, summarise_outcomes  # noqa: E402
from errors import UserError  # noqa: E402
from interactions import Interactions  # noqa: E402
from interactions.datasets import get_dataset  # noqa: E402
from models.sizes import DataShape  # noqa: E402
from rating_scale import RatingScale  # noqa: E402
from trainer.commands.baselines import parse_seeds, write_json  # noqa: E402
from trainer.evaluation import FALLBACK_BASELINE, evaluate_ranking, evaluate_rating  # noqa: E402
from trainer.protocols import PROTOCOL_TASK, make_split, protocol_ks  # noqa: E402
from trainer.runs import fit_on_split  # noqa: E402
from trainer.synthetic import generate  # noqa: E402
from trainer.training import fit, model_class  # noqa: E402
from trainer.tune import parse_budget, tune_model  # noqa: E402

VARIANTS = ("full", "40%", "15%", "binary", "synthetic")
PROTOCOLS = ("rating-random", "strong")
BASELINE = {"rating-random": ("bias", "rmse"), "strong": ("popularity", "ndcg@100")}
RANKER_OVER_POPULARITY = 1.2  # the bar: a ranker's NDCG@100 at least 1.2x popularity's
SYNTHETIC_TOLERANCE = 0.03  # on data with nothing but popularity and biases, within 3% of the baseline
NEURAL_OVER_TUNED_EASE = 0.95  # the bar: each tuned neural ranker at least 0.95x the tuned EASE
SUBSAMPLE_SEED = 0  # the same subsample for every split seed: the seeds vary the split, not the data


def subsample(inter: Interactions, fraction: float, seed: int = SUBSAMPLE_SEED) -> Interactions:
    """A seeded ``fraction`` of the rows; users and items left with no row are dropped (ids kept)."""
    keep = np.sort(np.random.default_rng(seed).choice(len(inter.users), int(fraction * len(inter.users)), replace=False))
    users, user_index = np.unique(inter.users[keep], return_inverse=True)
    items, item_index = np.unique(inter.items[keep], return_inverse=True)
    return Interactions(
        users=user_index.astype(np.int32), items=item_index.astype(np.int32), ratings=inter.ratings[keep],
        timestamps=None if inter.timestamps is None else inter.timestamps[keep],
        user_ids=np.asarray(inter.user_ids)[users], item_ids=np.asarray(inter.item_ids)[items],
        name=f"{inter.name}-{fraction:.0%}", rating_scale=inter.rating_scale,
    )


def binarised(inter: Interactions) -> Interactions:
    """Every rating a click: the implicit scale, on which every interaction is a positive."""
    return Interactions(
        users=inter.users, items=inter.items, ratings=np.ones(len(inter.users), dtype=np.float32),
        timestamps=inter.timestamps, user_ids=inter.user_ids, item_ids=inter.item_ids, name=f"{inter.name}-binary",
        rating_scale=RatingScale.parse("implicit"),
    )


def variant(name: str, ml100k: Interactions) -> Interactions:
    if name == "full":
        return ml100k
    if name.endswith("%"):
        return subsample(ml100k, float(name[:-1]) / 100)
    if name == "binary":
        return binarised(ml100k)
    return generate(2_000, 1_500, 100_000, seed=0)


def criteria(results: dict) -> list[dict]:
    """PASS/FAIL per (variant, model): RMSE below bias; NDCG@100 >= RANKER_OVER_POPULARITY x popularity."""
    out = []
    for name, block in results.items():
        for protocol, per_model in block["protocols"].items():
            baseline, metric = BASELINE[protocol]
            base = per_model[baseline]["metrics"][metric]["mean"]
            for model, result in per_model.items():
                if result["baseline"]:
                    continue
                value = result["metrics"][metric]["mean"]
                if name == "synthetic":  # the baseline is the truth there (module docstring)
                    worse = value / base - 1 if metric == "rmse" else 1 - value / base
                    ok, need = worse <= SYNTHETIC_TOLERANCE, f"within {SYNTHETIC_TOLERANCE:.0%} of {base:.4f} ({baseline})"
                elif metric == "rmse":
                    ok, need = value < base, f"< {base:.4f} (bias)"
                else:
                    ok, need = value >= RANKER_OVER_POPULARITY * base, f">= {RANKER_OVER_POPULARITY * base:.4f} ({RANKER_OVER_POPULARITY}x popularity)"
                out.append({"variant": name, "protocol": protocol, "model": model, "metric": metric, "value": value,
                            "baseline": base, "status": "PASS" if ok else "FAIL", "detail": f"{value:.4f}, needs {need}"})
    return out


def tuned_seed(data: Interactions, protocol: str, names: list[str], seed: int, budget_s: float,
               defaults: dict[str, dict] | None = None) -> dict[str, dict]:
    """{model: test metrics of its best trial, the chosen values and the trials} for every non-baseline
    model of ``names``, each searched for ``budget_s`` on ``seed``'s split (the one ``run_seed`` uses).
    A search with no completed trial ships the defaults, as ``trainer train --tune`` does: their test
    metrics from ``defaults`` ({model: run_seed's metrics on this seed}) or a fit."""
    split = make_split(protocol, data, seed)
    task = PROTOCOL_TASK[protocol]
    fallback = None
    if task == "rating":
        fallback = fit(FALLBACK_BASELINE, split.train, valid=split.valid, seed=seed, progress=False,
                       rating_range=split.rating_range).model
    out = {}
    for name in names:
        if name in BASELINES_FOR_TASK[task]:
            continue
        result = tune_model(
            name, lambda hyper, on_epoch: fit_on_split(name, split, hyper, seed=seed, progress=False, on_epoch=on_epoch),
            budget_s=budget_s, seed=seed, shape=DataShape.of(split.train))
        if result.best_fit is None and defaults is not None and name in defaults:
            out[name] = {"metrics": defaults[name], "values": {}, "states": result.counts(), "seconds": result.seconds}
            continue
        model = (result.best_fit or fit_on_split(name, split, {}, seed=seed, progress=False)).model
        metrics = (evaluate_rating(model, split.train, split.test, fallback=fallback) if task == "rating"
                   else evaluate_ranking(model, split.test, ks=protocol_ks(protocol)))
        out[name] = {"metrics": metrics, "values": result.record()["values"], "states": result.counts(),
                     "seconds": result.seconds}
        main = BASELINE[protocol][1]
        print(f"  [{protocol} seed {seed} tuned] {name:<12} {main} {metrics[main]:.4f}  {result.seconds:.0f}s, "
              f"{len(result.trials)} trials, values {out[name]['values']}", file=sys.stderr, flush=True)
    return out


def tuned_means(per_seed: list[dict[str, dict]], protocol: str) -> dict[str, float | None]:
    """{model: mean over the tuned seeds of its main metric}."""
    metric = BASELINE[protocol][1]
    names = per_seed[0] if per_seed else {}
    return {m: float(np.mean([s[m]["metrics"][metric] for s in per_seed])) for m in names}


def tuned_rows(results: dict, seeds: list[int], tune_seeds: list[int]) -> list[dict]:
    """One row per (variant, protocol, model): the defaults' mean on the tuned seeds (None when one of
    them had no defaults run) and the tuned mean of the main metric, with the first tuned seed's values."""
    rows = []
    for name, block in results.items():
        for protocol, tuned in block.get("tuned", {}).items():
            metric = BASELINE[protocol][1]
            for model, value in tuned["means"].items():
                per_seed = block["protocols"][protocol][model]["metrics"][metric]["values"]
                paired = [per_seed[seeds.index(s)] for s in tune_seeds if s in seeds]
                rows.append({"variant": name, "protocol": protocol, "model": model,
                             "defaults": float(np.mean(paired)) if len(paired) == len(tune_seeds) else None,
                             "tuned": value,
                             "values": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in tuned["seeds"][0][model]["values"].items())
                             or "the defaults"})
    return rows


def tuned_criteria(results: dict) -> list[dict]:
    """PASS/FAIL per (variant, neural ranker): tuned NDCG@100 >= NEURAL_OVER_TUNED_EASE x the tuned EASE's."""
    out = []
    for name, block in results.items():
        means = block.get("tuned", {}).get("strong", {}).get("means", {})
        if name == "synthetic" or "ease" not in means:
            continue
        ease = means["ease"]
        for model, value in means.items():
            cls = model_class(model)
            if cls.closed_form:
                continue
            ok = value >= NEURAL_OVER_TUNED_EASE * ease
            out.append({"variant": name, "protocol": "strong (tuned)", "model": model, "metric": "ndcg@100",
                        "value": value, "baseline": ease, "status": "PASS" if ok else "FAIL",
                        "detail": f"{value:.4f}, needs >= {NEURAL_OVER_TUNED_EASE * ease:.4f} "
                                  f"({NEURAL_OVER_TUNED_EASE}x the tuned EASE)"})
    return out


def plot(results: dict, path: Path) -> None:
    """Each model's main metric over its baseline's, per variant (above 1 is better for NDCG, below for RMSE)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(12, 4.5))
    for ax, protocol in zip(axes, PROTOCOLS):
        baseline, metric = BASELINE[protocol]
        for name, block in results.items():
            per_model = block["protocols"].get(protocol)
            if not per_model:
                continue
            base = per_model[baseline]["metrics"][metric]["mean"]
            models = [m for m, r in per_model.items() if not r["baseline"]]
            ax.plot(models, [per_model[m]["metrics"][metric]["mean"] / base for m in models], "o-", label=name)
        ax.axhline(1.0 if metric == "rmse" else RANKER_OVER_POPULARITY, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{protocol}: {metric} / {baseline}'s", fontsize="medium")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from models import REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--models", default=",".join(REGISTRY), help="comma-separated subset of the models")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated split/training seeds")
    parser.add_argument("--tune", action="store_true", help="add the tuned column (module docstring)")
    parser.add_argument("--tune-budget", default="60s", help="search time per model, variant and seed (60s, 5m)")
    parser.add_argument("--tune-seeds", default="0", help="comma-separated seeds of the tuned column")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench/out/robustness.json"), help="JSON to write (.png beside)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        variants = _names(args.variants, VARIANTS, "variant(s)")
        models = _names(args.models, list(REGISTRY), "model(s)")
        seeds = parse_seeds(args.seeds)
        tune_seeds = parse_seeds(args.tune_seeds)
        budget_s = parse_budget(args.tune_budget)
        ml100k = get_dataset("ml-100k", source=SHARED_ML100K if (SHARED_ML100K / "u.data").is_file() else None,
                             progress=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started, results = time.perf_counter(), {}
    for name in variants:
        data = variant(name, ml100k)
        protocols = ["strong"] if data.rating_scale.implicit else list(PROTOCOLS)
        runs = plan(protocols, models)
        print(f"{name}: {data.n_users:,} users x {data.n_items:,} items, {len(data.users):,} interactions",
              file=sys.stderr, flush=True)
        outcomes = {p: {m: [] for m in names} for p, names in runs.items()}
        for seed in seeds:
            for protocol, names in runs.items():
                for model, outcome in run_seed(data, protocol, names, seed).items():
                    outcomes[protocol][model].append(outcome)
        results[name] = {
            "shape": {"users": data.n_users, "items": data.n_items, "interactions": len(data.users)},
            "protocols": {p: summarise_outcomes(p, per_model) for p, per_model in outcomes.items()},
        }
        if args.tune:
            tuned = {p: [tuned_seed(data, p, names, seed, budget_s,
                                    {m: o[seeds.index(seed)]["metrics"] for m, o in outcomes[p].items()}
                                    if seed in seeds else None) for seed in tune_seeds]
                     for p, names in runs.items()}
            results[name]["tuned"] = {p: {"seeds": per_seed, "means": tuned_means(per_seed, p)}
                                      for p, per_seed in tuned.items()}
        report = {"seeds": seeds, "models": models, "results": results,
                  "tune": {"seeds": tune_seeds, "budget_s": budget_s} if args.tune else None,
                  "criteria": criteria(results) + tuned_criteria(results), "seconds": time.perf_counter() - started}
        write_json(report, args.out)
        plot(results, args.out.with_suffix(".png"))
    if args.tune:
        print_table(tuned_rows(results, seeds, tune_seeds), [
            ("variant", "variant", ""), ("protocol", "protocol", ""), ("model", "model", ""),
            ("defaults", "defaults (same seeds)", ".4f"), ("tuned", f"tuned ({args.tune_budget})", ".4f"),
            ("values", "chosen", "")])
    lines = criteria(results) + tuned_criteria(results)
    print_table(lines, [("variant", "variant", ""), ("protocol", "protocol", ""), ("model", "model", ""),
                        ("metric", "metric", ""), ("value", "ours", ".4f"), ("baseline", "baseline", ".4f"),
                        ("status", "", "")])
    for c in lines:
        print(f"{c['status']}  {c['variant']} {c['protocol']} {c['model']}: {c['detail']}")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({time.perf_counter() - started:.0f} s)")
    return 1 if any(c["status"] == "FAIL" for c in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
