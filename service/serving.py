"""What each read endpoint does, between the thin routes and the pure scoring in ``inference``.

Order for a recommendation: take the served version once (a swap mid-request cannot
change it), look in the cache under a key made of version, model, the user's generation
token and the request (``RecommendationLookup``), else answer from the user's stored top-N
list when it can say exactly what scoring would (``inference.stored_recommendation``: no
write since its data, seen items excluded, enough items left after the filters), on the
event loop when every title is known here, else read the history (one query, unless a list
for the same user under the same token read it: ``Histories.user_history``), score, add titles,
cache.
Cacheable answers leave here as JSON text (``Answer``): a hit is sent as it was stored,
with no parse and re-serialisation, and a miss is serialised once, for the cache and the
client alike. The cached endpoints are coroutines: the cache lookup runs on the event loop
(in process, or through the loop's Redis connection), so a hit costs no thread hop; only a
miss's work (query, scoring, serialising) goes to a worker thread (``ServiceParts.scoring``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from registry.best import BEST
from service import inference
from service.cache import Cache, CacheEntry, list_key
from service.core.config import Settings
from service.errors import ApiError
from service.model_store import ModelStore, ServingModel, ServingVersion
from service.parts import ServiceParts
from service.schemas import (
    Answer,
    PredictedRating,
    RatingRequest,
    EXPLAIN_MAX_K,
    Explanation,
    RatingResponse,
    Reason,
    RecommendationRequest,
    RecommendedList,
    RecommendedItem,
    ScoredItem,
    SimilarItemsResponse,
    stored_list_json,
)
from storage import crud
from storage.session import retry_if_dropped


_RATING_LIST = TypeAdapter(list[RatingResponse])
Compute = Callable[[CacheEntry], str]  # (the lookup's entry: the user's generation token, ...) -> the answer's JSON


def serving_version(store: ModelStore) -> ServingVersion:
    version = store.current  # read the reference once; this object serves the whole request
    if version is None:  # why is in the log: the body never carries paths or exception texts
        raise ApiError(503, "model_unavailable", "no model version is loaded yet", None, {"Retry-After": "5"})
    return version


def check_list(name: str, values: Sequence | None, settings: Settings) -> None:
    if values is not None and len(values) > settings.MAX_BATCH:
        raise ApiError(
            413, "batch_too_large", f"{name} has {len(values)} entries; at most {settings.MAX_BATCH} are allowed",
            {"field": name, "max": settings.MAX_BATCH},
        )


def _titles(session: Session, cache: Cache, settings: Settings, item_ids: list[str]) -> dict[str, str]:
    """Titles from the cache; the ones it lacks from the database (a connection only for those)."""
    return cache.titles.item_titles(item_ids, partial(read_titles, session), settings.CACHE_TTL_S)


def read_titles(session: Session, item_ids: list[str]) -> dict[str, str]:
    with crud.reads(session) as db:
        return crud.item_titles(db, item_ids)


def _read_history(session: Session, user_id: str) -> crud.History:
    with crud.reads(session) as db:
        return crud.user_history(db, user_id)


def _kept_history(session: Session, cache: Cache, settings: Settings, user_id: str, generation: str | None) -> crud.History:
    """The user's history kept in process under ``generation``, else one query (``Histories.user_history``)."""
    return cache.histories.user_history(user_id, generation, partial(_read_history, session, user_id), settings.CACHE_TTL_S)


def _scored_items(
    pairs: list[tuple[str, float]], first_rank: int, titles: dict[str, str], cls: type[ScoredItem] = ScoredItem
) -> list[ScoredItem]:
    return [cls(item_id=i, score=s, rank=first_rank + n, title=titles.get(i)) for n, (i, s) in enumerate(pairs)]


def _reasons(pairs: list[tuple[str, float]], titles: dict[str, str]) -> list[Reason]:
    return [Reason(item_id=i, title=titles.get(i), contribution=c) for i, c in pairs]


UNEXPLAINED = {"items": {"__all__": {"because"}}, "explanation": True}  # left out of an answer not asked to explain


def check_explain_size(n_items: int, field: str) -> None:
    """An explained answer explains at most ``EXPLAIN_MAX_K`` items (its work grows with them)."""
    if n_items > EXPLAIN_MAX_K:
        raise ApiError(
            422, "explain_too_many_items", f"explain covers at most {EXPLAIN_MAX_K} items per answer; {field} is {n_items}",
            {field: n_items, "max_explained": EXPLAIN_MAX_K},
        )


@dataclass(frozen=True)
class RecommendationLookup:
    """A recommendations request's place in the cache: the served version and model, and the
    key, which ends in the user's generation token (a write for the user moves it on).
    Calling it looks the key up."""

    version: ServingVersion
    served: ServingModel
    user_id: str
    key: str
    cache: Cache
    generation_ttl_s: float

    @classmethod
    def of(cls, parts: ServiceParts, user_id: str, request: RecommendationRequest) -> RecommendationLookup:
        """The request's lookup, after its limits are checked and its model resolved (``ApiError`` if not)."""
        settings = parts.settings
        check_recommendation_limits(request, settings)
        version = serving_version(parts.store)
        served = inference.resolve_model(version, request.model, settings.DEFAULT_MODEL)
        key = list_key("rec", version.version, served.name, user_id, request.key_fields())
        return cls(version, served, user_id, key, parts.cache, 2 * settings.CACHE_TTL_S)

    @property
    def model(self) -> str:
        return self.served.name

    async def __call__(self) -> CacheEntry:
        return await self.cache.users.user_entry_async(self.user_id, self.key, self.generation_ttl_s, kind="recommendations")


def check_recommendation_limits(request: RecommendationRequest, settings: Settings) -> None:
    """The limits of a recommendation request that depend on settings (``ApiError`` past one)."""
    if request.k + request.offset > settings.MAX_K:
        raise ApiError(
            422, "k_too_large", f"k + offset is {request.k + request.offset}; at most {settings.MAX_K} items can be ranked",
            {"k": request.k, "offset": request.offset, "max_k": settings.MAX_K},
        )
    if request.explain:
        check_explain_size(request.k, "k")
    check_list("exclude_items", request.exclude_items, settings)
    check_list("candidates", request.candidates, settings)


async def recommendations(
    session: Session | Callable[[], Session], parts: ServiceParts, user_id: str, request: RecommendationRequest
) -> Answer:
    """A ``RecommendedList`` as JSON: the cached one, the stored list's when its titles are all
    known here (no thread hop, no slot), else ``computed_recommendation``'s. ``session``: the caller's, or a
    factory of one, opened only if the answer is computed (creating one costs about what a hit does)."""
    lookup = RecommendationLookup.of(parts, user_id, request)
    entry = await lookup()
    if entry.value is not None:
        return Answer(lookup.model, entry.value)
    answer = stored_answer(lookup, request, entry)
    if answer is None:
        answer = await computed_recommendation(session, parts, lookup, request, entry)
    elif entry.key is not None:  # stored for the next ask after this answer is sent: a hit then
        parts.cache.backend.set_later(entry.key, answer, parts.settings.CACHE_TTL_S)
    return Answer(lookup.model, answer)


async def computed_recommendation(
    session: Session | Callable[[], Session], parts: ServiceParts, lookup: RecommendationLookup,
    request: RecommendationRequest, entry: CacheEntry,
) -> str:
    """A missed answer, computed in a scoring slot and cached: from the stored list with titles read from
    the database, else scored."""
    cache, settings, version, served, user_id = lookup.cache, parts.settings, lookup.version, lookup.served, lookup.user_id

    def compute(entry: CacheEntry) -> str:
        # the stored list when it can answer (not an explained answer: that reads the history); else the
        # history kept under the user's generation, or one query; titles likewise: a connection is taken
        # from the pool only for what the cache lacks (a session opened here holds none before)
        with nullcontext(session) if isinstance(session, Session) else session() as db:
            scored, more = _stored(lookup, request, entry), []
            if scored is None:
                history = _kept_history(db, cache, settings, user_id, entry.generation)
                scored = inference.recommend(version, served, user_id, history, **_options(request))
            else:  # the titles of the whole list in one query: the user's other pages are then answered on the loop
                cache.backend.count(True, "stored_list")
                history, more = None, inference.stored_items(served, user_id)
            item_ids = [i for i, _ in scored.items]
            explained = inference.explain(served, user_id, history, item_ids, scored.source) if request.explain else None
            reason_ids = [i for reasons in (explained.because or []) for i, _ in reasons] if explained else []
            titles = _titles(db, cache, settings, list(dict.fromkeys(item_ids + reason_ids + more)))
        return _recommendation_json(lookup, request, scored, titles, explained)

    return await _computed_and_cached(parts, entry, compute)


def _options(request: RecommendationRequest) -> dict[str, Any]:
    return dict(k=request.k, offset=request.offset, exclude_seen=request.exclude_seen,
                exclude_items=request.exclude_items, candidates=request.candidates)


def _stored(lookup: RecommendationLookup, request: RecommendationRequest, entry: CacheEntry) -> inference.Scored | None:
    """The answer the user's stored list gives (``inference.stored_recommendation``); None for an explained
    request (its reasons read the history) or when the list cannot say what scoring would."""
    if request.explain:
        return None
    return inference.stored_recommendation(lookup.served, lookup.user_id, entry.written_at, **_options(request))


def _recommendation_json(lookup: RecommendationLookup, request: RecommendationRequest, scored: inference.Scored,
                         titles: dict[str, str], explained: inference.Explained | None = None) -> str:
    items = _scored_items(scored.items, request.offset + 1, titles, RecommendedItem)
    explanation = None
    if explained is not None:
        for item, reasons in zip(items, explained.because or []):
            item.because = _reasons(reasons, titles)
        explanation = Explanation(method=explained.method, history_weighed=explained.history_weighed,
                                  history_total=explained.history_total, note=explained.note)
    response = RecommendedList(
        user_id=lookup.user_id, model=lookup.served.name, model_version=lookup.version.version, source=scored.source,
        items=items, unknown_items=scored.unknown_items, explanation=explanation,
    )
    return response.model_dump_json(exclude=None if request.explain else UNEXPLAINED)


def stored_answer(lookup: RecommendationLookup, request: RecommendationRequest, entry: CacheEntry) -> str | None:
    """The answer from the user's stored list, on the event loop: when the list can answer
    (``inference.stored_recommendation``) and every title is in process; else None (it is computed)."""
    scored = _stored(lookup, request, entry)
    if scored is None:
        return None
    titles = lookup.cache.titles.known([i for i, _ in scored.items])
    if titles is None:
        return None
    lookup.cache.backend.count(True, "stored_list")
    return stored_list_json(lookup.user_id, lookup.model, lookup.version.version, scored, request.offset + 1, titles)


async def _computed_and_cached(parts: ServiceParts, entry: CacheEntry, compute: Compute) -> str:
    """``compute(entry)``'s JSON for a lookup that missed, stored under its key.

    The cache is used from the event loop (in process, or the loop's Redis connection): a hit
    costs no thread hop (more hits/s than the lookup in a worker thread), and a miss holds its scoring slot
    (``ScoringSlots.run``) only for the query, scoring and serialising, not for the store
    of its answer. A hit never queues behind other requests' scoring. The history query
    stays inside the slot: moving it out (a thread hop more, and more threads taking turns
    on the GIL) served fewer misses on both backends (bench/serving.py; bench/RESULTS.md,
    "Figures moved out").
    """
    body = await parts.scoring.run(partial(retry_if_dropped, partial(compute, entry)))
    if entry.key is not None:  # stored from the loop too, after the slot is free for the next miss
        await parts.cache.backend.set_async(entry.key, body, parts.settings.CACHE_TTL_S)
    return body


def _rating_histories(session: Session, cache: Cache, settings: Settings, user_ids: list[str]) -> crud.History:
    """The histories a ratings request needs. One user (a single request object, the usual
    call): kept in process under the user's generation token, as a recommendation miss
    reads it, else one query. Several users: one query for them all (a token each would
    cost a Redis round trip per user)."""
    if len(set(user_ids)) == 1:
        user_id = user_ids[0]
        return _kept_history(session, cache, settings, user_id, cache.users.user_generation(user_id, 2 * settings.CACHE_TTL_S))
    with crud.reads(session) as db:
        return crud.user_histories(db, user_ids)


async def ratings(session: Session, parts: ServiceParts, requests: list[RatingRequest], many: bool) -> Answer:
    """A ``RatingResponse`` per request as JSON: a list of them if ``many``, else the one. Its size
    was checked before validation (``request_limits.check_ratings_size``)."""
    cache, settings = parts.cache, parts.settings
    for r in requests:
        check_list("item_ids", r.item_ids, settings)
        if r.explain:
            check_explain_size(len(r.item_ids), "item_ids")
    version = serving_version(parts.store)
    queries = [
        inference.RatingQuery(r.user_id, r.item_ids, inference.resolve_model(version, r.model, settings.DEFAULT_RATING_MODEL, rating=True))
        for r in requests
    ]

    def predicted() -> str:
        histories = _rating_histories(session, cache, settings, [r.user_id for r in requests])
        responses = [
            RatingResponse(
                user_id=q.user_id, model=q.model.name, model_version=version.version, source=r.source,
                ratings=[PredictedRating(item_id=i, rating=v) for i, v in r.ratings], unknown_items=r.unknown_items,
            )
            for q, r in zip(queries, inference.predict_ratings(queries, histories))
        ]
        if not any(r.explain for r in requests):
            return _RATING_LIST.dump_json(responses).decode() if many else responses[0].model_dump_json()
        for request, query, response in zip(requests, queries, responses):
            if request.explain:
                _explain_ratings(session, cache, settings, query, response, histories)
        bodies = [response.model_dump_json(exclude=None if request.explain else UNEXPLAINED_RATINGS)
                  for request, response in zip(requests, responses)]
        return f"[{','.join(bodies)}]" if many else bodies[0]

    models = ",".join(sorted({q.model.name for q in queries}))
    return Answer(models, await parts.scoring.run(partial(retry_if_dropped, predicted)))


UNEXPLAINED_RATINGS = {"ratings": {"__all__": {"because"}}, "explanation": True}


def _explain_ratings(
    session: Session, cache: Cache, settings: Settings, query: inference.RatingQuery, response: RatingResponse,
    histories: crud.History,
) -> None:
    """Each predicted rating's reasons, and how they were found, written into ``response``."""
    explained = inference.explain(query.model, query.user_id, histories, [p.item_id for p in response.ratings], response.source)
    reason_ids = [i for reasons in (explained.because or []) for i, _ in reasons]
    titles = _titles(session, cache, settings, list(dict.fromkeys(reason_ids))) if reason_ids else {}
    for predicted, reasons in zip(response.ratings, explained.because or []):
        predicted.because = _reasons(reasons, titles)
    response.explanation = Explanation(method=explained.method, history_weighed=explained.history_weighed,
                                       history_total=explained.history_total, note=explained.note)


async def similar(session: Session, parts: ServiceParts, item_id: str, k: int, model: str | None) -> Answer:
    """A ``SimilarItemsResponse`` as JSON."""
    cache, settings = parts.cache, parts.settings
    if k > settings.MAX_K:
        raise ApiError(422, "k_too_large", f"k is {k}; at most {settings.MAX_K}", {"k": k, "max_k": settings.MAX_K})
    version = serving_version(parts.store)
    served = inference.resolve_model(version, model, settings.DEFAULT_MODEL, embeddings=True)

    key = list_key("sim", version.version, served.name, item_id, k)
    entry = CacheEntry(key, await cache.backend.get_async(key, kind="similar"), None)
    if entry.value is not None:
        return Answer(served.name, entry.value)

    def compute(_: CacheEntry) -> str:
        pairs = inference.similar_items(served, item_id, k)
        titles = _titles(session, cache, settings, [i for i, _ in pairs])
        response = SimilarItemsResponse(
            item_id=item_id, model=served.name, model_version=version.version, items=_scored_items(pairs, 1, titles)
        )
        return response.model_dump_json()

    return Answer(served.name, await _computed_and_cached(parts, entry, compute))


def models_report(store: ModelStore, settings: Settings) -> dict:
    version = store.current
    models = []
    if version is not None:
        # endpoint -> (model, why): what a request naming no model gets, and why (the version's record, or a setting)
        chosen = {}
        for endpoint, task, setting in (("recommendations", "ranking", "DEFAULT_MODEL"), ("ratings", "rating", "DEFAULT_RATING_MODEL")):
            value = getattr(settings, setting)
            chosen[endpoint] = version.defaults.get(task, (None, "")) if value == BEST else (value, f"the {setting} setting")
        for name, served in version.models.items():
            info = served.loaded.info or {}
            defaults = [endpoint for endpoint, (model, _) in chosen.items() if model == name]
            models.append({
                "name": name, "task": served.task, "can_fold_in": served.can_fold_in,
                "n_users": served.model.n_users, "n_items": served.model.n_items, "default_for": defaults,
                "default_reason": "; ".join(dict.fromkeys(chosen[e][1] for e in defaults)) or None, "baseline": bool(info.get("baseline")),
                "valid_metric": info.get("valid_metric"), "metrics": info.get("metrics") or served.loaded.metrics.get("test") or {},
            })
    return {
        "version": version.version if version else None,
        "loaded_at": version.loaded_at.isoformat(timespec="seconds") if version else None,
        "created_at": version.manifest.get("created_at") if version else None,
        "requested": store.requested,
        "fallback": store.fallback,
        "swaps": store.swaps,
        "refused": {v: refusal.reason for v, refusal in store.refused.items()},
        "models": models,
    }


