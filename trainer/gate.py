"""The quality gate: a new model is published only if it is not worse than the published one.

The comparison is on the validation metric (NDCG@100 for rankers, RMSE for rating
models), relative, with a tolerance: refuse when ``new < old (1 - tol)`` (higher is
better) or ``new > old (1 + tol)`` (RMSE). The published model (the champion) is scored
again in the same run, beside the new one (the challenger), on the challenger's
validation split, with its positive rule; a figure recorded on another held-out set is
never the bar (poisoned data would otherwise set its own: a version published on planted,
trivially predictable users records a figure no honest run reaches again).

0. **Declared the same, or refused.** A champion whose version declares another rating
   scale, another positive threshold (rankers: a rating model never reads it) or whose
   figure came from another protocol is not comparable: the gate refuses, naming both
   values (``--no-gate`` forces).
1. **The same users and targets.** Each version publishes, per model, the (user, item)
   pairs it trained on (``trained_pairs.npz``, checksummed like the other files). The
   comparison's targets are the challenger's validation targets less every pair the
   champion trained on (it was refit on all its data: those targets would flatter it) and
   less the items it does not know (it cannot rank them: they would measure the
   catalogue's growth, or items planted with the data, not the models); users left
   without a target drop out. Each model folds a user in from the inputs it can read and
   both rank only the items both know (rating models: predict the remaining validation
   ratings from the user's training ratings). Compared when at least ``MIN_FAIR_USERS``
   users remain.
2. Fewer than that, and **the same held-out set** (same data and seed: each version's
   ``metrics.json`` records the protocol, the split seed and the sha256 of its validation
   users and interactions): the champion's recorded figure is on these very users, and is
   compared.
3. Fewer, on another held-out set: **not comparable**, passed and said so (a change of
   data alone never refuses; typically the champion trained on every held-out pair).

Kept from the rule before: a model that cannot fold in users (AutoRec-I) is compared with
its recorded figure (on the same held-out set, or said to be on its own). A version
published before trained pairs were written is scored on held-out users it never saw
(every pair of a user it knows counts as trained on), else by its recorded figure, the
message saying so. A model the published version does not have passes unchecked.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from errors import TrainingError
from interactions import Interactions
from trainer.protocols import RankingSplit, RatingSplit

if TYPE_CHECKING:
    from registry import LoadedModel

DEFAULT_GATE_TOLERANCE = 0.02  # relative: refuse a validation metric more than 2% worse than the published one
MIN_FAIR_USERS = 20  # fewer held-out users than this are too noisy to judge a model by


class Challenger(Protocol):
    """What the gate reads of a new model's run (``trainer.runs.ModelRun``, which records the decision)."""

    name: str
    protocol: str
    split_model: Any  # fitted on the split's train part: scored beside the published model
    valid_metric: str
    valid_value: float
    higher_is_better: bool
    fingerprint: dict[str, Any]  # ``heldout_fingerprint`` of its split


class GateRefused(TrainingError):
    """A model's validation metric is worse than the published one's beyond the tolerance."""


@dataclass
class GateDecision:
    passed: bool
    metric: str
    new: float | None
    old: float | None
    tolerance: float
    basis: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def heldout_fingerprint(inter: Interactions, split: RatingSplit | RankingSplit) -> dict[str, Any]:
    """Hashes of the validation users and of every validation interaction, by external ids."""
    user_ids = np.asarray(inter.user_ids).astype(str)
    item_ids = np.asarray(inter.item_ids).astype(str)
    if isinstance(split, RatingSplit):
        pairs = split.valid.tocoo()
        users = user_ids[pairs.row]
        lines = [f"{u}\t{i}\t{r:.6g}" for u, i, r in zip(users, item_ids[pairs.col], pairs.data)]
    else:
        columns = item_ids[split.item_ids]
        held_users = user_ids[split.valid.users]
        lines = []
        for kind, matrix in (("input", split.valid.inputs), ("target", split.valid.targets)):
            coo = sp.coo_matrix(matrix)
            lines += [f"{u}\t{i}\t{kind}" for u, i in zip(held_users[coo.row], columns[coo.col])]
        users = held_users
    unique_users = sorted(set(users.tolist()))
    return {
        "protocol": split.protocol,
        "seed": split.seed,
        "n_valid_users": len(unique_users),
        "valid_users_sha256": _sha256(unique_users),
        "valid_sha256": _sha256(lines),
    }


def _restrict(matrix: sp.csr_matrix, rows: np.ndarray, column_map: np.ndarray, width: int) -> sp.csr_matrix:
    """Rows ``rows`` of ``matrix`` with column j moved to ``column_map[j]`` (dropped where -1)."""
    coo = sp.csr_matrix(matrix)[rows].tocoo()
    target = column_map[coo.col]
    keep = target >= 0
    out = sp.csr_matrix((coo.data[keep], (coo.row[keep], target[keep])), shape=(len(rows), width))
    out.sort_indices()
    return out


def _fair_targets(
    targets: sp.csr_matrix, held_users: np.ndarray, old_of_new: np.ndarray, published: LoadedModel,
    trained: sp.csr_matrix | None,
) -> sp.csr_matrix:
    """``targets`` less those the published model cannot be judged on: items it does not know, and pairs it
    trained on (``trained`` None, a version without them: every pair of a user it knows)."""
    coo = targets.tocoo()
    old_users = pd.Index(published.user_ids).get_indexer(held_users)[coo.row]  # -1: a user it never saw
    old_items = old_of_new[coo.col]
    known = (old_users >= 0) & (old_items >= 0)
    if trained is None:
        seen = old_users >= 0
    else:
        seen = np.zeros(len(known), dtype=bool)
        if known.any():
            seen[known] = np.asarray(trained[old_users[known], old_items[known]]).ravel()
    keep = (old_items >= 0) & ~seen & (coo.data != 0)
    out = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=targets.shape)
    out.sort_indices()
    return out


def _ranking_figure(model: Any, inputs: sp.csr_matrix, targets: sp.csr_matrix, stamps: sp.csr_matrix | None,
                    candidates: np.ndarray, metric: str) -> float:
    """``metric`` of the model's lists from ``inputs``, seen items excluded, ranked among ``candidates`` only."""
    from trainer.metrics import ranking_report

    k = int(metric.split("@")[1])
    ranked, _ = model.recommend(inputs, k=k, exclude_seen=True, candidates=candidates, timestamps=stamps)
    return ranking_report(ranked, targets, ks=(k,), n_items=model.n_items)[metric]


def _on_the_same_targets(
    run: Challenger, inter: Interactions, split: RatingSplit | RankingSplit, published: LoadedModel,
    trained: sp.csr_matrix | None,
) -> tuple[float, float, int, int]:
    """(new, published, n users, n targets): both models on this run's validation users and targets, less
    the targets the published model trained on or cannot rank (``_fair_targets``).

    Each model folds a user in from the inputs it can read (the published one drops items it does not
    know), and both rank, or predict, only items both know: the published model cannot rank an item it
    never saw, so a target there would measure the catalogue's growth (or items planted with the data),
    not the models.
    """
    from trainer.evaluation import evaluate_rating

    user_ids = np.asarray(inter.user_ids).astype(str)
    item_ids = np.asarray(inter.item_ids).astype(str)
    if isinstance(split, RatingSplit):
        columns, held_users, inputs, targets, stamps = item_ids, user_ids, split.train, split.valid, None
    else:
        valid = split.valid
        columns, held_users = item_ids[split.item_ids], user_ids[valid.users]
        inputs, targets, stamps = valid.inputs, valid.targets, valid.input_timestamps
    old_of_new = pd.Index(published.item_ids).get_indexer(columns)  # -1: an item the published model does not know
    targets = _fair_targets(sp.csr_matrix(targets), held_users, old_of_new, published, trained)
    rows = np.flatnonzero(np.diff(targets.indptr) > 0)
    n_targets = int(targets.nnz)
    if len(rows) < MIN_FAIR_USERS:
        return float("nan"), float("nan"), len(rows), n_targets

    new_width, old_width = len(columns), published.model.n_items
    same = np.arange(new_width)
    new_in, old_in = _restrict(inputs, rows, same, new_width), _restrict(inputs, rows, old_of_new, old_width)
    new_t, old_t = _restrict(targets, rows, same, new_width), _restrict(targets, rows, old_of_new, old_width)
    if isinstance(split, RatingSplit):
        new = evaluate_rating(run.split_model, new_in, new_t)[run.valid_metric]
        old = evaluate_rating(published.model, old_in, old_t)[run.valid_metric]
        return new, old, len(rows), n_targets
    new_stamps = None if stamps is None else _restrict(stamps, rows, same, new_width)
    old_stamps = None if stamps is None else _restrict(stamps, rows, old_of_new, old_width)
    both = old_of_new >= 0
    new = _ranking_figure(run.split_model, new_in, new_t, new_stamps, np.flatnonzero(both), run.valid_metric)
    old = _ranking_figure(published.model, old_in, old_t, old_stamps, old_of_new[both], run.valid_metric)
    return new, old, len(rows), n_targets


def declared_differences(run: Challenger, inter: Interactions, published: LoadedModel,
                         manifest: dict[str, Any] | None) -> list[str]:
    """What the published model was trained or judged under that this run declares otherwise: rating scale,
    positive threshold (rankers only: a rating model never reads it), protocol. Undeclared: not compared."""
    manifest = manifest or {}
    scale = inter.rating_scale
    declared = [
        ("rating scale", (manifest.get("rating_scale") or {}).get("scale"), str(scale)),
        ("protocol", (published.metrics or {}).get("protocol"), run.protocol),
    ]
    if run.valid_metric != "rmse":
        declared.append(("positive threshold", manifest.get("positive_threshold"), scale.positive))
    differ = []
    for what, old, new in declared:
        if old is not None and (float(old) != float(new) if what == "positive threshold" else str(old) != str(new)):
            differ.append(f"{what} {old} there, {new} here")
    return differ


def decide(metric: str, new: float, old: float, higher_is_better: bool, tolerance: float, basis: str, who: str) -> GateDecision:
    if higher_is_better:
        passed = new >= old * (1.0 - tolerance)
        change = (new - old) / abs(old) if old else 0.0
    else:
        passed = new <= old * (1.0 + tolerance)
        change = (old - new) / abs(old) if old else 0.0
    verdict = "ok" if passed else "REFUSED"
    worse = f"{abs(change):.1%} {'better' if change >= 0 else 'worse'}"
    message = (
        f"{who}: validation {metric} {new:.4f} against {old:.4f} published ({worse}, tolerance {tolerance:.1%}, "
        f"{basis}): {verdict}"
    )
    return GateDecision(passed, metric, float(new), float(old), tolerance, basis, message)


def quality_gate(
    run: Challenger,
    inter: Interactions,
    split: RatingSplit | RankingSplit,
    published: LoadedModel,
    published_version: str | None,
    tolerance: float,
    manifest: dict[str, Any] | None = None,
) -> GateDecision:
    """Compare ``run`` with the published model of the same name (see the module docstring);
    ``manifest`` is the published version's (its declared rating scale and positive threshold)."""
    from registry import TRAINED_PAIRS_FILE, read_trained_pairs

    where = f"version {published_version}"
    differ = declared_differences(run, inter, published, manifest)
    if differ:
        return GateDecision(False, run.valid_metric, run.valid_value, None, tolerance, "declared differently",
                            f"{run.name}: not comparable with {where} ({'; '.join(differ)}): REFUSED")
    recorded = (published.metrics or {}).get("valid") or {}
    old_value = recorded.get(run.valid_metric)
    same_heldout = (old_value is not None
                    and (published.metrics.get("heldout") or {}).get("valid_sha256") == run.fingerprint["valid_sha256"])

    def on_record(basis: str) -> GateDecision:
        return decide(run.valid_metric, run.valid_value, float(old_value), run.higher_is_better, tolerance, basis,
                      run.name)

    if not published.model.can_fold_in:  # it cannot score users it did not train on: only its record is left
        if old_value is None:
            return _unchecked(run, tolerance, "not comparable", f"{where} recorded no validation {run.valid_metric}")
        return on_record(f"same held-out set as {where}" if same_heldout
                         else f"recorded figure of {where} on its own held-out users: it cannot fold in users")
    trained = read_trained_pairs(published)
    new, old, n, n_targets = _on_the_same_targets(run, inter, split, published, trained)
    if trained is None:  # published before trained pairs were written: today's rule before them, said so
        legacy = f"{where} has no {TRAINED_PAIRS_FILE}, the rule before it"
        if same_heldout:
            return on_record(f"same held-out set as {where}")
        if n >= MIN_FAIR_USERS:
            return decide(run.valid_metric, new, old, run.higher_is_better, tolerance,
                          f"{n} held-out users {where} never saw; {legacy}", run.name)
        if old_value is None:
            return _unchecked(run, tolerance, "not comparable", f"{where} recorded no validation {run.valid_metric}")
        return on_record(f"recorded figure of {where} on its own held-out users; {legacy}")
    if n >= MIN_FAIR_USERS:
        return decide(run.valid_metric, new, old, run.higher_is_better, tolerance,
                      f"both on the same {n} held-out users, {n_targets} targets {where} never trained on", run.name)
    if same_heldout:  # same data and seed: its recorded figure is on these very users
        return on_record(f"same held-out set as {where}")
    return _unchecked(run, tolerance, f"not comparable: {n} users",
                      f"only {n} held-out users have targets {where} never trained on (fewer than {MIN_FAIR_USERS}), "
                      "and its held-out set was another")


def _unchecked(run: Challenger, tolerance: float, basis: str, why: str) -> GateDecision:
    """A pass without a comparison: a change of data alone never refuses a model."""
    return GateDecision(True, run.valid_metric, run.valid_value, None, tolerance, basis,
                        f"{run.name}: {why}; not compared: ok")
