"""The quality gate: a new model is published only if it is not worse than the published one.

The comparison is on the validation metric (NDCG@100 for rankers, RMSE for rating
models), relative, with a tolerance: refuse when ``new < old (1 - tol)`` (higher is
better) or ``new > old (1 + tol)`` (RMSE). Which numbers are compared, best first:

1. **The same held-out set.** Each version's ``metrics.json`` records the protocol, the
   split seed and a fingerprint of its validation set (sha256 of the held-out users'
   external ids, and of every held-out interaction). Same protocol and fingerprint (same
   data, same seed): the recorded validation figure is compared directly.
2. **Held-out users the published model never saw.** After the data grew, the split
   (same seed) holds out other users. The published model was refit on all the data it
   had, so scoring it on users it trained on would flatter it (their targets were in its
   training data). It is therefore scored, beside the new model, on the new validation
   users absent from its ``ids.json``, with inputs and targets cut to the items both
   models know, when there are at least ``MIN_FAIR_USERS`` of them.
3. Otherwise (too few new users, or a model that cannot fold in users): the recorded
   figure on the previous held-out users, said so in the message.
A model the published version does not have, or whose protocol changed, passes unchecked.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from trainer.dataset import Interactions
from trainer.errors import TrainingError
from trainer.splits import HeldOut, RankingSplit, RatingSplit

if TYPE_CHECKING:
    from trainer.artifacts import LoadedModel
    from trainer.pipeline import ModelRun

MIN_FAIR_USERS = 20  # fewer held-out users than this are too noisy to judge a model by


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


def _on_unseen_users(
    run: ModelRun, inter: Interactions, split: RatingSplit | RankingSplit, published: LoadedModel
) -> tuple[float, float, int] | None:
    """(new, published, n users): both models on validation users the published one never trained on."""
    from trainer.evaluation import evaluate_ranking, evaluate_rating

    if not published.model.can_fold_in:
        return None
    user_ids = np.asarray(inter.user_ids).astype(str)
    known_users = pd.Index(published.user_ids)
    if isinstance(split, RatingSplit):
        new_columns = np.asarray(inter.item_ids).astype(str)
        held_users = user_ids
        targets = split.valid
    else:
        new_columns = np.asarray(inter.item_ids).astype(str)[split.item_ids]
        held_users = user_ids[split.valid.users]
        targets = split.valid.targets
    old_of_new = pd.Index(published.item_ids).get_indexer(new_columns)  # -1: item unknown to the published model
    common = np.where(old_of_new >= 0, np.arange(len(new_columns)), -1)
    has_targets = np.diff(_restrict(targets, np.arange(targets.shape[0]), common, len(new_columns)).indptr) > 0
    rows = np.flatnonzero((known_users.get_indexer(held_users) < 0) & has_targets)
    if len(rows) < MIN_FAIR_USERS:
        return None

    new_width, old_width = run.split_model.n_items, published.model.n_items
    if isinstance(split, RatingSplit):
        new = evaluate_rating(run.split_model, _restrict(split.train, rows, common, new_width),
                              _restrict(split.valid, rows, common, new_width))
        old = evaluate_rating(published.model, _restrict(split.train, rows, old_of_new, old_width),
                              _restrict(split.valid, rows, old_of_new, old_width))
        return new[run.valid_metric], old[run.valid_metric], len(rows)

    valid = split.valid
    k = int(run.valid_metric.split("@")[1])

    def held_out(column_map: np.ndarray, width: int) -> HeldOut:
        stamps = None if valid.input_timestamps is None else _restrict(valid.input_timestamps, rows, column_map, width)
        return HeldOut(
            inputs=_restrict(valid.inputs, rows, column_map, width),
            targets=_restrict(valid.targets, rows, column_map, width),
            users=valid.users[rows],
            train_rows=np.full(len(rows), -1, dtype=np.int64),
            input_timestamps=stamps,
        )

    new = evaluate_ranking(run.split_model, held_out(common, new_width), ks=(k,))
    old = evaluate_ranking(published.model, held_out(old_of_new, old_width), ks=(k,))
    return new[run.valid_metric], old[run.valid_metric], len(rows)


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
    run: ModelRun,
    inter: Interactions,
    split: RatingSplit | RankingSplit,
    published: LoadedModel,
    published_version: str | None,
    tolerance: float,
) -> GateDecision:
    """Compare ``run`` with the published model of the same name (see the module docstring)."""
    recorded = published.metrics or {}
    old_value = (recorded.get("valid") or {}).get(run.valid_metric)
    same_protocol = recorded.get("protocol") == run.protocol
    where = f"version {published_version}"
    if same_protocol and old_value is not None:
        if (recorded.get("heldout") or {}).get("valid_sha256") == run.fingerprint["valid_sha256"]:
            return decide(run.valid_metric, run.valid_value, float(old_value), run.higher_is_better, tolerance,
                          f"same held-out set as {where}", run.name)
    fair = _on_unseen_users(run, inter, split, published)
    if fair is not None:
        new, old, n = fair
        return decide(run.valid_metric, new, old, run.higher_is_better, tolerance,
                      f"{n} held-out users new since {where}", run.name)
    if same_protocol and old_value is not None:
        return decide(run.valid_metric, run.valid_value, float(old_value), run.higher_is_better, tolerance,
                      f"recorded figure of {where} on its own held-out users", run.name)
    return GateDecision(True, run.valid_metric, run.valid_value, None, tolerance, "not comparable",
                        f"{run.name}: {where} used another protocol or metric; not compared")
