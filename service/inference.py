"""Scoring with a served model: external ids -> model columns -> model -> external ids.

Pure functions of a ``ServingVersion`` and users' histories (``crud.History``); no
database, no cache. Ids are mapped over whole arrays (``IdIndex``), rows are built as
one CSR, and the model scores all rows of a request in one call. Every score and rating a
model gives passes ``finite`` on its way out: none that is NaN or infinite reaches a client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from interactions.rows import implicit_at_top, is_positive, keep_latest_pairs
from registry.best import BEST
from service.cache import NO_WRITE
from service.errors import ApiError
from service.model_store import IdIndex, ServingModel, ServingVersion
from service.schemas import EXPLAIN_MAX_HISTORY, EXPLAIN_MAX_HISTORY_SEQUENTIAL, EXPLAIN_REASONS
from storage.crud import History

log = logging.getLogger("service.inference")


@dataclass
class Rows:
    """Users' histories in a model's item space, one row per user."""

    X: sp.csr_matrix  # model input: 1 per item for rankers, the latest rating for rating models
    seen: sp.csr_matrix  # every item the user interacted with (explicit or implicit), binary
    timestamps: sp.csr_matrix  # same pattern as X: when (sequential models read the order)


@dataclass
class Scored:
    items: list[tuple[str, float]]
    source: str
    unknown_items: list[str] = field(default_factory=list)


def finite(served: ServingModel, values: np.ndarray) -> np.ndarray:
    """``values`` if every one is finite; else the model cannot answer this request (503, logged)."""
    if not np.isfinite(values).all():
        log.error("model %s gave %d non-finite scores for a request", served.name, int((~np.isfinite(values)).sum()))
        raise ApiError(
            503, "model_fault", f"model {served.name} gave a non-finite score for this request; it cannot answer it",
            {"model": served.name},
        )
    return values


def resolve_model(
    version: ServingVersion, name: str | None, default: str, *, rating: bool = False, embeddings: bool = False
) -> ServingModel:
    """The model named, else ``default`` (a DEFAULT_*MODEL setting); "best" is the version's best of the task.
    ``embeddings`` (similar items): a "best" without item embeddings (popularity) gives way to the first ranker with them."""
    name = name or default
    if name == BEST:
        name = version.defaults.get("rating" if rating else "ranking", (None, ""))[0]
        if embeddings and name is not None and version.models[name].item_vectors is None:
            name = next((n for n, m in version.models.items() if m.task == "ranking" and m.item_vectors is not None), name)
        if name is None:
            raise ApiError(
                404, "unknown_model", f"the served version {version.version} has no {'rating' if rating else 'ranking'} model",
                {"model": BEST, "available": sorted(version.models)},
            )
    served = version.models.get(name)
    if served is None:
        raise ApiError(
            404, "unknown_model", f"model {name!r} is not in the served version {version.version}",
            {"model": name, "available": sorted(version.models)},
        )
    if rating and served.task != "rating":
        rating_models = sorted(n for n, m in version.models.items() if m.task == "rating")
        raise ApiError(
            422, "not_a_rating_model", f"model {name!r} ranks items; it does not predict ratings",
            {"model": name, "rating_models": rating_models},
        )
    return served


def history_rows(served: ServingModel, history: History, users: Sequence[str]) -> Rows:
    """One CSR row per user in ``users``; items the model does not know are left out."""
    shape = (len(users), served.model.n_items)
    r = IdIndex(users).get_indexer(history.user_ids)
    c = served.item_index.get_indexer(history.item_ids)
    keep = (r >= 0) & (c >= 0)
    r, c, ratings, ts = r[keep], c[keep], history.ratings[keep], history.timestamps[keep]
    # The latest interaction per (user, item), by the rule the trainer keeps (interactions.rows)
    latest, _ = keep_latest_pairs(r, c, ts)
    r, c, ratings, ts = r[latest], c[latest], ratings[latest], ts[latest]
    order = np.lexsort((c, r))  # CSR order, so every matrix is built from its arrays directly
    r, c, ratings, ts = r[order], c[order], ratings[order], ts[order]
    seen = _sorted_csr(r, c, np.ones(len(r), np.float32), shape)
    # Then what that latest interaction says: an older rating is never used in its place
    if served.task == "rating":
        ratings = implicit_at_top(ratings, served.model.rating_range[1])  # a click trained as the top rating
        use = ratings != 0  # the models read a 0 as no rating: the row is as empty as the model sees it
    elif served.positive_threshold is not None:
        use = is_positive(ratings, served.positive_threshold)
    else:
        use = np.ones(len(r), dtype=bool)
    r, c, ratings, ts = r[use], c[use], ratings[use], ts[use]
    values = ratings.astype(np.float32) if served.task == "rating" else np.ones(len(r), np.float32)
    X = _sorted_csr(r, c, values, shape)
    timestamps = sp.csr_matrix((ts.astype(np.float64), X.indices, X.indptr), shape=shape)
    return Rows(X, seen, timestamps)


def _sorted_csr(r: np.ndarray, c: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix from entries sorted by (row, column), each pair once: no COO sort, no summing."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((values, c, indptr), shape=shape)


def _columns(served: ServingModel, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Known columns of ``ids`` and the ids the model does not know."""
    if not ids:
        return np.array([], dtype=np.int64), []
    cols = served.item_index.get_indexer(ids)
    return np.unique(cols[cols >= 0]), _unique([i for i, col in zip(ids, cols) if col < 0])


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))  # first-seen order


COLD = "cold"  # no usable history: the popularity list ("popular"), the bias baseline ("cold-start")
STRANGER = "stranger"  # a model that cannot fold in, and a new user with a history it would need to


def user_source(served: ServingModel, known: bool, has_input: bool) -> str:
    """How ``served`` answers a user, on every endpoint: "model" (its training row), "fold-in" (its
    stored history), ``COLD`` or ``STRANGER``. ``known``: the model has a training row for the user;
    ``has_input``: the user's stored history gives a non-empty input row for this model."""
    if not served.can_fold_in:  # scores from the training row alone
        return "model" if known else (STRANGER if has_input else COLD)
    if not has_input:  # a model reading an empty row answers as for no one (a user-mean-centred DeepRec: 1.0 for every item)
        return COLD
    return "model" if known else "fold-in"


def recommend(
    version: ServingVersion,
    served: ServingModel,
    user_id: str,
    history: History,
    *,
    k: int,
    offset: int,
    exclude_seen: bool,
    exclude_items: Sequence[str],
    candidates: Sequence[str] | None,
) -> Scored:
    """Top ``k`` items after ``offset`` for one user: from the model, by fold-in, or the popularity list."""
    exclude_cols, unknown_excluded = _columns(served, exclude_items)
    candidate_cols, unknown_candidates = _columns(served, candidates or [])
    unknown = _unique(unknown_excluded + unknown_candidates)
    rows = history_rows(served, history, [user_id])
    model = served.model
    user_row = served.user_index.get(user_id)
    source = user_source(served, user_row >= 0, rows.X.nnz > 0)
    if source == STRANGER:
        raise ApiError(
            404, "unknown_user",
            f"model {served.name} serves only users it was trained on, and user {user_id!r} appeared after training; "
            "use a model that folds in new users",
            {"user_id": user_id, "model": served.name},
        )
    if source == COLD:
        return Scored(_popular(version, history, k, offset, exclude_seen, exclude_items, candidates), "popular", unknown)
    if candidates is not None and len(candidate_cols) == 0:
        return Scored([], source, unknown)

    exclude = np.union1d(exclude_cols, rows.seen.indices) if exclude_seen else exclude_cols
    ids, scores = model.recommend(
        rows.X, k + offset, users=np.array([user_row]), timestamps=rows.timestamps, exclude_seen=exclude_seen,
        exclude=exclude if len(exclude) else None, candidates=candidate_cols if candidates is not None else None)
    finite(served, scores[~np.isneginf(scores)])  # -inf pads the tail when fewer items are allowed; NaN or +inf is a fault
    ids, scores = ids[0, offset:], scores[0, offset:]
    found = ids >= 0  # fewer than k + offset items allowed: the tail is padding
    return Scored(list(zip(served.item_ids[ids[found]].tolist(), scores[found].tolist())), source, unknown)


def stored_recommendation(
    served: ServingModel,
    user_id: str,
    written_at: float,
    *,
    k: int,
    offset: int,
    exclude_seen: bool,
    exclude_items: Sequence[str],
    candidates: Sequence[str] | None,
) -> Scored | None:
    """What ``recommend`` would answer, read from the user's stored top-N list; None when the list
    cannot say it exactly (the request is then scored).

    The list holds the model's scores of every unseen item, best first, for the history the
    model was published with: it answers when the user has no write since (``written_at``, from
    the cache: ``NO_WRITE``, or before ``StoredLists.valid_before``), seen items are to be
    excluded (they already are), and after the exclusions and candidates filter it, offset + k
    items remain whose order no item outside the list or tied with them could change.
    """
    lists = served.lists
    if lists is None or not exclude_seen or not (written_at == NO_WRITE or written_at < lists.valid_before):
        return None
    row, n = served.user_index.get(user_id), lists.items.shape[1]
    # the row through memoryviews, read as Python values: numpy's calls cost a first request more (bench/request_cpu.py)
    items = memoryview(lists.items).cast("B").cast("i")[row * n : row * n + n] if row >= 0 else None
    if items is None or items[0] < 0:
        return None
    scores = memoryview(lists.scores).cast("B").cast("f")[row * n : row * n + n]
    need, complete, lowest = offset + k, items[-1] < 0, scores[-1]  # padded: every item the user may get is in the list
    unknown: list[str] = []
    if exclude_items or candidates is not None:  # the items left, as if they were the list
        exclude_cols, unknown_excluded = _columns(served, exclude_items)
        candidate_cols, unknown_candidates = _columns(served, candidates or [])
        unknown, allowed = _unique(unknown_excluded + unknown_candidates), np.asarray(items) >= 0
        if len(exclude_cols):
            allowed &= ~np.isin(items, exclude_cols)
        if candidates is not None:
            allowed &= np.isin(items, candidate_cols)
        positions = np.flatnonzero(allowed)
        items, scores, listed = np.asarray(items)[positions], np.asarray(scores)[positions], len(positions)
    else:  # the usual request: the list itself, up to its padding
        listed = int(np.argmax(np.asarray(items) < 0)) if complete else n
    if not complete and (listed < need or (listed == need and not scores[need - 1] > lowest)):
        return None  # an unlisted item could be next, or tie with the page's last
    # a tie at the page's edges could be ordered otherwise by scoring (torch.topk)
    start, end = max(0, offset - 1), min(need, listed)
    edge = scores[start : min(need + 1, listed)].tolist()
    if not all(map(float.__gt__, edge, edge[1:])):
        return None
    ids = served.item_ids
    pairs = [(ids[c], s) for c, s in zip(items[offset:end].tolist(), edge[offset - start : end - start])]
    return Scored(pairs, "model", unknown)


def stored_items(served: ServingModel, user_id: str) -> list[str]:
    """Every item of the user's stored list (none without one): whose titles a first answer fetches at once."""
    row = served.user_index.get(user_id) if served.lists is not None else -1
    if row < 0:
        return []
    items = served.lists.items[row]
    return served.item_ids[items[items >= 0]].tolist()


@dataclass
class Explained:
    """Why a user's items scored as they did (``explain``): per item, the history items that added
    most, best first, as (item id, contribution); None with a ``note`` when the answer has none."""

    because: list[list[tuple[str, float]]] | None
    method: str  # "weights", "removal" or "none"
    history_weighed: int = 0
    history_total: int = 0
    note: str | None = None


def explain(served: ServingModel, user_id: str, history: History, item_ids: Sequence[str], source: str) -> Explained:
    """The ``EXPLAIN_REASONS`` history items that add most to each of ``item_ids`` (items the model
    knows: the ones it just scored for ``user_id``), from the model's ``contributions``: exact for
    EASE and EDLAE, else the score drop of removing each of the user's ``EXPLAIN_MAX_HISTORY`` most recent
    history items (a sequential model: ``EXPLAIN_MAX_HISTORY_SEQUENTIAL``), in one batched pass. ``source``: how scored."""
    model = served.model
    if source in (COLD, "popular", "cold-start"):
        return Explained(None, "none", note="no history of the user's for the model to read: nothing explains this answer")
    if not model.explainable:
        return Explained(None, "none", note=f"model {served.name}'s scores do not depend on the history it is given "
                         "(it scores by user index or the same for everyone): nothing to explain them by")
    rows = history_rows(served, history, [user_id])
    X = rows.X
    # the most recent first (ties: the higher column first), the oldest beyond the cap left out; a sequential
    # model's cap is lower, as the schema says: its removals cost the square of the steps (models/svae.py)
    order = np.lexsort((-X.indices, -rows.timestamps.data))[:EXPLAIN_MAX_HISTORY_SEQUENTIAL if model.sequential else EXPLAIN_MAX_HISTORY]
    weighed = X.indices[order].astype(np.int64)
    cols = served.item_index.get_indexer(list(item_ids))
    user_row = served.user_index.get(user_id)
    drops = model.contributions(X, cols[cols >= 0], history=weighed, users=np.array([user_row]),
                                timestamps=rows.timestamps)
    finite(served, drops)
    top = np.argsort(-drops, axis=1, kind="stable")[:, :EXPLAIN_REASONS]
    reasons = iter([[(str(served.item_ids[weighed[j]]), float(d[j])) for j in t] for d, t in zip(drops, top)])
    because = [next(reasons) if col >= 0 else [] for col in cols]
    note = None
    if X.nnz > len(weighed):
        note = f"only the {len(weighed)} most recent of the user's {X.nnz} history items were weighed"
    return Explained(because, model.explained_by, len(weighed), int(X.nnz), note)


def _popular(
    version: ServingVersion,
    history: History,
    k: int,
    offset: int,
    exclude_seen: bool,
    exclude_items: Sequence[str],
    candidates: Sequence[str] | None,
) -> list[tuple[str, float]]:
    popular = version.popular_items
    allowed = np.ones(len(popular), dtype=bool)
    if exclude_seen and len(history):
        allowed &= ~popular.isin(history.item_ids)
    if exclude_items:
        allowed &= ~popular.isin(exclude_items)
    if candidates is not None:
        allowed &= popular.isin(candidates)
    picked = np.flatnonzero(allowed)[offset : offset + k]
    return list(zip(popular[picked].tolist(), version.popular_counts[picked].tolist()))


@dataclass
class RatingQuery:
    user_id: str
    item_ids: list[str]
    model: ServingModel


@dataclass
class Rated:
    ratings: list[tuple[str, float]]
    source: str
    unknown_items: list[str]


def predict_ratings(queries: Sequence[RatingQuery], histories: History) -> list[Rated]:
    """Predicted ratings for each query, all queries of one model scored in one ``predict`` call."""
    out: list[Rated | None] = [None] * len(queries)
    by_model: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_model.setdefault(q.model.name, []).append(i)
    for indices in by_model.values():
        served = queries[indices[0]].model
        users = _unique([queries[i].user_id for i in indices])
        rows = history_rows(served, histories, users)
        user_rows = served.user_index.get_indexer(users)
        sources = np.array([user_source(served, known, has_input)
                            for known, has_input in zip(user_rows >= 0, np.diff(rows.X.indptr) > 0)], dtype=object)
        if (sources == STRANGER).any():
            strangers = [u for u, s in zip(users, sources) if s == STRANGER]
            raise ApiError(
                404, "unknown_user",
                f"model {served.name} serves only users it was trained on; unknown: {', '.join(map(repr, strangers[:5]))}",
                {"user_ids": strangers, "model": served.name},
            )
        row_of = IdIndex(users)
        # One (user row, item column) pair per known requested item, over all queries of this model.
        pair_row, pair_col, spans, unknown = [], [], [], []
        for i in indices:
            q = queries[i]
            cols = served.item_index.get_indexer(q.item_ids)
            known = cols >= 0
            pair_row.append(np.full(known.sum(), row_of.get(q.user_id)))
            pair_col.append(cols[known])
            spans.append(np.asarray(q.item_ids, dtype=object)[known])
            unknown.append(_unique([item for item, k in zip(q.item_ids, known) if not k]))
        pr, pc = np.concatenate(pair_row).astype(np.int64), np.concatenate(pair_col).astype(np.int64)
        predictions = np.empty(len(pr), dtype=np.float32)
        pair_source = sources[pr]
        cold = pair_source == COLD
        if not cold.all():  # known users by their training row, the rest (-1) folded in from their history
            predictions[~cold] = served.model.predict(rows.X, pc[~cold], users=user_rows, pair_rows=pr[~cold])
        if cold.any():  # never the model's answer to an empty row
            predictions[cold] = served.cold_ratings(pc[cold])
        finite(served, predictions)
        start = 0
        for j, i in enumerate(indices):
            n = len(spans[j])
            source = sources[row_of.get(queries[i].user_id)]
            out[i] = Rated(list(zip(spans[j].tolist(), predictions[start : start + n].tolist())),
                           "cold-start" if source == COLD else source, unknown[j])
            start += n
    return out  # type: ignore[return-value]


def similar_items(served: ServingModel, item_id: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` items whose embeddings are closest to ``item_id``'s (cosine similarity)."""
    col = served.item_index.get(item_id)
    if col < 0:
        raise ApiError(404, "unknown_item", f"model {served.name} does not know item {item_id!r}", {"item_id": item_id})
    if served.item_vectors is None:
        raise ApiError(422, "no_item_embeddings", f"model {served.name} has no item embeddings", {"model": served.name})
    similarity = served.item_vectors.cosine_to(col)
    similarity[col] = -np.inf  # an item is not similar to itself for this purpose
    k = min(k, len(similarity) - 1)
    if k <= 0:
        return []
    top = np.argpartition(-similarity, k - 1)[:k]
    top = top[np.argsort(-similarity[top], kind="stable")]
    return list(zip(served.item_ids[top].tolist(), finite(served, similarity[top]).astype(float).tolist()))
