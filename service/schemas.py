"""The API's request and response bodies (pydantic), kept apart from the ORM tables.

User and item ids are the dataset's own external ids. The API takes them as strings
or integers and converts them with ``str()``; they are always strings in responses.
Limits that depend on settings (``MAX_K``, ``MAX_BATCH``) are checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic_core import to_json

# No control characters: they are never meaningful in an id and PostgreSQL refuses NUL in text.
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MODEL_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
RECOMMENDATION_ID_PATTERN = r"^[0-9a-f]{32}$"  # a UUID in hex (the service makes UUIDv7s)
ID_INT_LIMIT = 10**18
ID_MAX_CHARS = 255  # the ids' column width (String(255) in storage.tables)


def _external_id(value: Any) -> Any:
    """Integers (also JSON's 7.0, which is the integer 7) become their decimal string."""
    if isinstance(value, bool):
        raise ValueError("an id must be a string or an integer, not a boolean")
    if isinstance(value, float) and value.is_integer() and abs(value) <= ID_INT_LIMIT:
        value = int(value)
    if isinstance(value, int):
        if abs(value) > ID_INT_LIMIT:
            raise ValueError(f"an integer id must be within +-{ID_INT_LIMIT}")
        return str(value)
    return value


IdString = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
ExternalId = Annotated[
    IdString,
    BeforeValidator(_external_id),
    WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": ID_MAX_CHARS, "pattern": ID_PATTERN},
        {"type": "integer", "minimum": -ID_INT_LIMIT, "maximum": ID_INT_LIMIT},
    ]}),
]
"""An external user or item id: a string or an integer, stored and returned as a string."""

ModelName = Annotated[str, StringConstraints(pattern=MODEL_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


# ---- errors ---------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# ---- recommendations ------------------------------------------------------------------
# Explanations (``explain``): bounded work, whatever the settings. A ranker's explanation scores one
# row per history item weighed, so the history is capped; the list explained is capped too.
EXPLAIN_MAX_K = 50  # most items explained in one answer (k of a recommendation list, item_ids of a rating request)
EXPLAIN_MAX_HISTORY = 200  # the user's most recent history items weighed as reasons
# A sequential model's (SVAE's) removal of the item h steps back re-runs the h steps after it: weighing
# the last n costs ~n^2/2 GRU steps, so fewer are weighed (bench figures in the commit adding it).
EXPLAIN_MAX_HISTORY_SEQUENTIAL = 50
EXPLAIN_REASONS = 3  # reasons given per item
EXPLAIN_DESCRIPTION = (
    f"Give each item `because`: the (at most {EXPLAIN_REASONS}) history items of the user that raise its score "
    f"most, best first. Only the user's {EXPLAIN_MAX_HISTORY} most recent history items are weighed "
    f"({EXPLAIN_MAX_HISTORY_SEQUENTIAL} for a sequential model, SVAE: each removal re-runs the steps after it), "
    f"though the model still reads the whole history; `explanation` says how many were weighed. At most {EXPLAIN_MAX_K} items are "
    "explained per answer: more is a 422 (explain_too_many_items). EASE/EDLAE explain exactly (the weight B[j, i] "
    "of history item j towards item i); other models by the drop in the item's score when that history item is "
    "removed, all removals scored in one batched pass. A model whose scores do not depend on the history "
    "(AutoRec-I, popularity) and the popularity list give `because: null` and say why in `explanation.note`."
)


class Reason(BaseModel):
    item_id: str = Field(description="A history item of the user.")
    title: str | None = None
    contribution: float = Field(description="How much it adds to the item's score (predicted rating, for a rating "
                                "model, before clipping): the drop when it is removed from the history.")


class Explanation(BaseModel):
    method: Literal["weights", "removal", "none"] = Field(
        description="weights: the model's exact linear terms (EASE, EDLAE); removal: the score drop measured per "
        "history item; none: no explanation (see note).")
    history_weighed: int = Field(description=f"History items weighed as reasons (the most recent, at most {EXPLAIN_MAX_HISTORY}; "
                                 f"{EXPLAIN_MAX_HISTORY_SEQUENTIAL} for a sequential model).")
    history_total: int = Field(description="History items the model reads for this user.")
    note: str | None = Field(default=None, description="Why items carry no reasons, or what was left out.")


class RecommendationRequest(Strict):
    k: int = Field(default=10, ge=1, description="How many items to return (at most MAX_K, counting offset).")
    model: ModelName | None = Field(default=None, description="A model of the served version; the default model if omitted.")
    exclude_seen: bool = True
    exclude_items: list[ExternalId] = Field(default_factory=list, description="Items never to return.")
    candidates: list[ExternalId] | None = Field(default=None, description="If given, only these items may be returned.")
    offset: int = Field(default=0, ge=0, description="Skip this many of the best items (paging).")
    explain: bool = Field(default=False, description=EXPLAIN_DESCRIPTION + f" Here: k <= {EXPLAIN_MAX_K}.")

    def key_fields(self) -> dict[str, Any]:
        """The request in its answer's cache key: ``model_dump`` less the model and, unexplained, ``explain`` (the key
        it always had), read from the validated fields, which the dump only copied (bench/RESULTS.md, "Cache-hit CPU")."""
        excluded = ("model",) if self.explain else ("model", "explain")
        return {name: value for name, value in self.__dict__.items() if name not in excluded}


class ScoredItem(BaseModel):
    item_id: str
    score: float
    rank: int
    title: str | None = None


class RecommendedItem(ScoredItem):
    because: list[Reason] | None = Field(
        default=None, description="With explain: the history items that raise this item's score most; absent without.")


class RecommendedList(BaseModel):
    """A recommendation answer as it is computed and cached: the same for every request it answers."""

    user_id: str
    model: str
    model_version: str
    source: Literal["model", "fold-in", "popular"]
    items: list[RecommendedItem]
    unknown_items: list[str] = Field(default_factory=list, description="Ids in exclude_items/candidates the model does not know.")
    explanation: Explanation | None = Field(default=None, description="With explain: how the reasons were found; absent without.")


def stored_list_json(user_id: str, model: str, model_version: str, scored: Any, first_rank: int, titles: dict[str, str]) -> str:
    """A ``RecommendedList`` without explanation as ``model_dump_json`` writes it, from a stored list's page (an
    ``inference.Scored``: ids, float scores), not validated again: a first request's models cost it more than the
    rest of its answer (bench/request_cpu.py; tests/service/test_stored_lists.py compares the bytes)."""
    items = [{"item_id": i, "score": s, "rank": rank, "title": titles.get(i)} for rank, (i, s) in enumerate(scored.items, first_rank)]
    return to_json({"user_id": user_id, "model": model, "model_version": model_version, "source": scored.source, "items": items,
                    "unknown_items": scored.unknown_items}, inf_nan_mode="null").decode()


class ExperimentArm(BaseModel):
    id: str = Field(description="The running experiment.")
    arm: str = Field(description="The user's arm (sticky), 'holdout', or 'interleaved' for a team-draft mix of two arms.")


class RecommendationResponse(RecommendedList):
    """A ``RecommendedList`` as one request is answered: its own id (spliced into the cached answer), its experiment."""

    recommendation_id: str = Field(pattern=RECOMMENDATION_ID_PATTERN, description="This answer's id (a UUIDv7 in hex), new on "
                                   "every request: POST /feedback names it with the items clicked, rated, bought or dismissed.")
    experiment: ExperimentArm | None = Field(default=None, description="When a running experiment chose the list (the request "
                                             "named no model); absent otherwise.")


# ---- ratings --------------------------------------------------------------------------
class RatingRequest(Strict):
    user_id: ExternalId
    item_ids: list[ExternalId] = Field(min_length=1)
    model: ModelName | None = Field(default=None, description="A rating model; DEFAULT_RATING_MODEL if omitted.")
    explain: bool = Field(default=False, description=EXPLAIN_DESCRIPTION.replace("`because`", "`because` (per rating)")
                          .replace("raise its score", "raise its predicted rating") + f" Here: at most {EXPLAIN_MAX_K} item_ids.")


class PredictedRating(BaseModel):
    item_id: str
    rating: float
    because: list[Reason] | None = Field(
        default=None, description="With explain: the history items that raise this predicted rating most; absent without.")


class RatingResponse(BaseModel):
    user_id: str
    model: str
    model_version: str
    source: Literal["model", "fold-in", "cold-start"]
    ratings: list[PredictedRating]
    unknown_items: list[str] = Field(default_factory=list, description="Requested items the model does not know.")
    explanation: Explanation | None = Field(default=None, description="With explain: how the reasons were found; absent without.")


# ---- interactions ---------------------------------------------------------------------
class InteractionIn(Strict):
    user_id: ExternalId
    item_id: ExternalId
    rating: float | None = Field(
        default=None, strict=True, allow_inf_nan=False,  # strict: "5" and true are refused, not read as 5.0 and 1.0
        description="A number on the deployment's rating scale (RATING_SCALE); None: implicit feedback.",
    )
    timestamp: int | None = Field(default=None, ge=0, le=10**12, description="Epoch seconds; the insertion time if omitted.")


class InteractionsResult(BaseModel):
    received: int = Field(description="Entries in the batch.")
    inserted: int = Field(description="(user, item) pairs stored for the first time.")
    updated: int = Field(default=0, description="Stored pairs whose rating or timestamp this batch replaced (a re-rating).")
    unchanged: int = Field(default=0, description="Entries that changed nothing: superseded by a later entry of the batch, "
                           "no newer than the stored row, or equal to it.")
    duplicates: int = Field(description="received - inserted: entries that stored no new pair (kept for older clients).")
    new_users: int
    new_items: int


# ---- feedback and experiments ---------------------------------------------------------
class FeedbackIn(Strict):
    recommendation_id: str = Field(pattern=RECOMMENDATION_ID_PATTERN, description="The recommendation_id of the answer that listed the item.")
    item_id: ExternalId = Field(description="An item of that list (another item is a 422).")
    kind: Literal["click", "rating", "purchase", "dismiss"]
    value: float | None = Field(default=None, strict=True, allow_inf_nan=False,
                                description="A rating's value, on the deployment's rating scale; only for kind rating.")


class FeedbackResult(BaseModel):
    received: int = Field(description="Events in the request.")
    stored: int = Field(description="Events stored for the first time.")
    duplicates: int = Field(description="Events stored before (the same list, item and kind): not stored again.")


class ArmIn(Strict):
    name: str = Field(description="A slug, unique in the experiment ('holdout' is reserved).")
    model: ModelName = Field(description="A ranking model of the version.")
    version: str | None = Field(default=None, description="A version of the model registry; null: the version served.")
    share: float | None = Field(default=None, description="Share of the users outside the holdout; all arms give one "
                                "(summing to 1) or none (equal shares).")


class ExperimentIn(Strict):
    id: str = Field(description="A slug: lowercase letters, digits, '-' or '_'.")
    kind: Literal["ab", "interleaving"] = Field(description="ab: each user sees their arm's list; interleaving: "
                                                "team-draft mixes of the two arms' lists.")
    arms: list[ArmIn] = Field(min_length=1)
    seed: int = Field(default=0, description="Seeds the sticky assignment of users to arms (a new seed reshuffles them).")
    holdout: float | None = Field(default=None, ge=0, lt=1, description="Share of users served the popularity list.")
    shadow: bool = Field(default=False, description="Serve the first arm to everyone; the other arms score the same "
                         "requests, recorded as shadow impressions, not served.")


class ExperimentOut(BaseModel):
    id: str
    kind: str
    status: Literal["running", "stopped"]
    definition: dict[str, Any]
    created_at: str
    started_at: str | None
    stopped_at: str | None


# ---- items, models, health ------------------------------------------------------------
class SimilarItemsResponse(BaseModel):
    item_id: str
    model: str
    model_version: str
    items: list[ScoredItem]


class ModelInfo(BaseModel):
    name: str
    task: str
    can_fold_in: bool
    n_users: int
    n_items: int
    default_for: list[str] = Field(default_factory=list, description="Endpoints that use this model when none is named.")
    default_reason: str | None = Field(
        default=None, description="Why it is the default: the version's best validation figure against its baseline, "
        "the fallback for a version without that record, or the setting that names it.")
    baseline: bool = Field(default=False, description="A baseline (bias, popularity) published beside the models.")
    valid_metric: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    version: str | None = Field(description="The version served.")
    requested: str | None = Field(default=None, description="The version LATEST names.")
    fallback: str | None = Field(
        default=None, description="Why an older version serves instead of the one LATEST names; null when it does."
    )
    loaded_at: str | None
    created_at: str | None
    swaps: int
    refused: dict[str, str] = Field(default_factory=dict, description="Versions refused, with the reason.")
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


class ReloadResult(BaseModel):
    version: str | None = Field(description="The version served after the reload.")
    previous: str | None
    swapped: bool
    message: str


class TrainingRequest(Strict):
    models: list[ModelName] | None = Field(
        default=None, max_length=64, description="Models to train, each one of the trainer's model names; "
        "omitted: all. Anything else is refused (422): nothing from the request reaches the command line unchecked.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the splits and of training.")


class TrainingRun(BaseModel):
    id: str
    state: Literal["running", "finished", "failed"] = Field(description="failed: the trainer exited non-zero "
                                                                          "(bad data, a refusing gate, another run holding the lock).")
    models: list[str]
    seed: int
    pid: int
    started_at: str
    ended_at: str | None
    exit_code: int | None
    command: list[str] = Field(description="The trainer's command line (the database URL goes by environment, not here).")
    output_tail: list[str] = Field(description="The last lines of the run's output so far.")


class Answer(NamedTuple):
    """A response body already serialised (a hit's as it was cached), and the model that produced it (for the metrics).
    A tuple: built twice a cache hit, where a frozen dataclass's ``__init__`` costs more (bench/RESULTS.md, issue 23)."""

    model: str
    json: str
