"""Online evaluation's data access: experiments, impressions (the lists served) and the feedback they earn.

Part of the one data layer (``storage.crud``): the routes and the background writer call these,
never SQL of their own. Per-arm metrics are SQL aggregates: one row per arm comes back, whatever
the number of impressions.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import Connection, case, distinct, func, literal, select
from sqlalchemy.orm import Session, aliased

from storage.crud.common import chunks, core_connection, dialect_insert, one_writer
from storage.crud.writing import IdempotencyClaim, record_answers
from storage.tables import Experiment, Feedback, Impression, ImpressionHead

FEEDBACK_KINDS = ("click", "rating", "purchase", "dismiss")
ENGAGED_KINDS = ("click", "rating", "purchase")  # an event that says the item was wanted (a dismiss does not)


def as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives back naive datetimes of what was written in UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---- experiments -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentRow:
    id: str
    kind: str
    definition: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    sequential_p_values: dict[str, float] | None

    @property
    def active(self) -> bool:
        return self.started_at is not None and self.stopped_at is None


_EXPERIMENT_COLUMNS = select(Experiment.id, Experiment.kind, Experiment.definition, Experiment.created_at,
                             Experiment.started_at, Experiment.stopped_at, Experiment.sequential_p_values)


def create_experiment(session: Session, id_: str, kind: str, definition: dict[str, Any], now: datetime) -> bool:
    """Store and start an experiment; False (nothing written) when one with this id exists, running or stopped."""
    table = Experiment.__table__
    with one_writer(session):
        connection = session.connection()
        stmt = dialect_insert(connection, table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
        created = connection.execute(stmt, {"id": id_, "kind": kind, "definition": definition, "created_at": now,
                                            "started_at": now, "stopped_at": None}).first()
        session.commit()
    return created is not None


def stop_experiment(session: Session, id_: str, now: datetime) -> ExperimentRow | None:
    """Stop a running experiment (a stopped one keeps its stop time); None when there is no such experiment."""
    table = Experiment.__table__
    with one_writer(session):
        connection = session.connection()
        connection.execute(table.update().where(table.c.id == id_, table.c.stopped_at.is_(None)).values(stopped_at=now))
        row = connection.execute(_EXPERIMENT_COLUMNS.where(Experiment.id == id_)).first()
        session.commit()
    return None if row is None else ExperimentRow(*row)


def experiments(db: Session | Connection, *, active_only: bool = False) -> list[ExperimentRow]:
    stmt = _EXPERIMENT_COLUMNS.order_by(Experiment.created_at, Experiment.id)
    if active_only:
        stmt = stmt.where(Experiment.started_at.is_not(None), Experiment.stopped_at.is_(None))
    return [ExperimentRow(*row) for row in core_connection(db).execute(stmt).all()]


def experiment(db: Session | Connection, id_: str) -> ExperimentRow | None:
    row = core_connection(db).execute(_EXPERIMENT_COLUMNS.where(Experiment.id == id_)).first()
    return None if row is None else ExperimentRow(*row)


def record_sequential_p_values(session: Session, id_: str, p_values: dict[str, float]) -> None:
    """Keep the always-valid p-values of this look (each no higher than the last look's: the caller's rule)."""
    table = Experiment.__table__
    with one_writer(session):
        session.connection().execute(table.update().where(table.c.id == id_).values(sequential_p_values=p_values))
        session.commit()


def experiments_fingerprint(db: Session | Connection) -> tuple:
    """Changes whenever an experiment is created or stopped: what a replica polls instead of re-reading them all."""
    stmt = select(func.count(), func.count(Experiment.stopped_at), func.max(Experiment.created_at), func.max(Experiment.stopped_at))
    return tuple(core_connection(db).execute(stmt).one())


# ---- impressions -----------------------------------------------------------------------------
# One impression as it is inserted, in ``_IMPRESSION_COLUMNS`` order: plain values, its items and teams as JSON text,
# its time as integer nanoseconds since the epoch (``epoch_ns``: a clock read the request side makes cheaply)
ImpressionRow = tuple[str, str, str | None, str | None, bool, str, str, str, str | None, int, int]
_IMPRESSION_COLUMNS = ("recommendation_id", "user_id", "experiment_id", "arm", "shadow", "model", "version", "items", "teams",
                      "k", "created_at")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_ns(moment: datetime) -> int:
    """A time as integer nanoseconds since the epoch (``time.time_ns``'s scale), exact to its microsecond."""
    return (as_utc(moment) - EPOCH) // _MICROSECOND * 1000


def from_epoch_ns(ns: int) -> datetime:
    """An ``epoch_ns`` time as an aware UTC datetime (to the microsecond, as the databases keep it)."""
    return EPOCH + (ns // 1000) * _MICROSECOND


@dataclass(frozen=True)
class ImpressionRecord:
    """An impression from its parts (a served answer is cut into its row by ``service.impressions.ServedAnswer``)."""

    recommendation_id: str
    user_id: str
    model: str
    version: str
    items: list[str]
    k: int
    created_at: datetime
    experiment_id: str | None = None
    arm: str | None = None
    shadow: bool = False
    teams: list[str] | None = None

    def row(self) -> ImpressionRow:
        return (self.recommendation_id, self.user_id, self.experiment_id, self.arm, self.shadow, self.model, self.version,
                json.dumps(self.items), None if self.teams is None else json.dumps(self.teams), self.k, epoch_ns(self.created_at))


@dataclass(frozen=True)
class ShownList:
    """What a feedback event is checked against: the list an impression showed and who it was shown to."""

    recommendation_id: str
    user_id: str
    items: list[str]
    teams: list[str] | None
    experiment_id: str | None
    arm: str | None
    created_at: datetime

    def position(self, item_id: str) -> int | None:
        """The item's 1-based rank in the list, None when it was not shown."""
        try:
            return self.items.index(item_id) + 1
        except ValueError:
            return None

    def team(self, position: int) -> str | None:
        return None if self.teams is None else self.teams[position - 1]


def shown_lists(db: Session | Connection, recommendation_ids: Sequence[str]) -> dict[str, ShownList]:
    """The served (not shadow) lists among ``recommendation_ids``."""
    found: dict[str, ShownList] = {}
    columns = select(Impression.recommendation_id, Impression.user_id, Impression.items, Impression.teams,
                     Impression.experiment_id, Impression.arm, Impression.created_at)
    for chunk in chunks(sorted(set(recommendation_ids))):
        stmt = columns.where(Impression.recommendation_id.in_(list(chunk)), Impression.shadow.is_(False))
        found.update((row[0], ShownList(*row)) for row in core_connection(db).execute(stmt).all())
    return found


def recent_lists(db: Session | Connection, user_ids: Sequence[str], since: datetime) -> dict[str, list[ShownList]]:
    """Each user's served lists created at or after ``since``, newest first: their chain walked from its head
    (``ImpressionHead``) back while an impression or one written before it was created since then (``newest_at``)."""
    found: dict[str, list[ShownList]] = {}
    columns = select(Impression.recommendation_id, Impression.user_id, Impression.items, Impression.teams,
                     Impression.experiment_id, Impression.arm, Impression.created_at)
    step = aliased(Impression)
    for chunk in chunks(sorted(set(user_ids))):
        walk = (select(ImpressionHead.recommendation_id.label("id"))
                .where(ImpressionHead.user_id.in_(list(chunk)), ImpressionHead.newest_ns >= epoch_ns(since))
                .cte("walk", recursive=True))
        walk = walk.union_all(
            select(step.prev_recommendation_id).join(walk, step.recommendation_id == walk.c.id)
            .where(step.prev_recommendation_id.is_not(None), func.coalesce(step.newest_at, step.created_at) >= since))
        stmt = (columns.join(walk, Impression.recommendation_id == walk.c.id)
                .where(Impression.created_at >= since, Impression.shadow.is_(False))
                .order_by(Impression.created_at.desc(), Impression.recommendation_id))
        for row in core_connection(db).execute(stmt).all():
            found.setdefault(row[1], []).append(ShownList(*row))
    return found


# ---- feedback --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackRecord:
    recommendation_id: str
    item_id: str
    kind: str
    value: float | None
    position: int
    team: str | None
    source: str  # "feedback" | "interaction"
    created_at: datetime

    @property
    def gain(self) -> float | None:
        """A rating's discounted gain, value / log2(rank + 1): the rule of ``service.experiments.stats``."""
        return None if self.kind != "rating" or self.value is None else self.value / math.log2(self.position + 1)


@dataclass(frozen=True)
class StoredFeedback:
    answer: dict[str, int]  # received, stored, duplicates
    inserted: list[FeedbackRecord]


def store_feedback(session: Session, records: Sequence[FeedbackRecord], claim: IdempotencyClaim | None = None) -> StoredFeedback:
    """Insert a batch of feedback in one transaction; an event stored already (same list, item and kind) is not
    stored again. With ``claim``, the answer is recorded in the same transaction (``IdempotencyKeyTaken``)."""
    table = Feedback.__table__
    unique = {(r.recommendation_id, r.item_id, r.kind): r for r in records}  # one statement may not touch a row twice
    rows = [{"recommendation_id": r.recommendation_id, "item_id": r.item_id, "kind": r.kind, "value": r.value,
             "position": r.position, "gain": r.gain, "team": r.team, "source": r.source, "created_at": r.created_at}
            for _, r in sorted(unique.items())]  # sorted: one lock order for concurrent transactions
    inserted = []
    with one_writer(session):
        try:
            connection = session.connection()
            stmt = dialect_insert(connection, table).on_conflict_do_nothing(
                index_elements=["recommendation_id", "item_id", "kind"]).returning(table.c.id)
            for (_, record), row in zip(sorted(unique.items()), rows):  # RETURNING per row: an executemany's is not portable
                if connection.execute(stmt, row).first() is not None:
                    inserted.append(record)
            answer = {"received": len(records), "stored": len(inserted), "duplicates": len(records) - len(inserted)}
            if claim is not None:
                record_answers(connection, [(claim, answer)], int(time.time()))
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return StoredFeedback(answer, inserted)


# ---- per-arm aggregates ----------------------------------------------------------------------
@dataclass(frozen=True)
class ArmAggregate:
    """Sums over one arm's served impressions, from which ``service.experiment_report`` derives its metrics."""

    arm: str
    impressions: int
    shown: int  # items shown, summed over impressions (CTR's denominator)
    clicks: int  # engaged events (click, rating, purchase) on distinct items
    hits: int  # impressions with at least one engaged event (hit-rate@k)
    conversions: int  # impressions with a purchase
    reciprocal_rank: float  # sum over impressions of 1 / rank of the best-placed engaged item (0 without)
    reciprocal_rank_sq: float
    gain: float  # sum over impressions of the rated items' discounted gains
    gain_sq: float
    shadow_impressions: int = 0


def arm_aggregates(db: Session | Connection, experiment_id: str) -> list[ArmAggregate]:
    """One ``ArmAggregate`` per arm that has impressions (served ones; the shadow ones counted apart)."""
    connection = core_connection(db)
    engaged = Feedback.kind.in_(ENGAGED_KINDS)
    per_list = (
        select(
            Feedback.recommendation_id.label("rid"),
            func.count(distinct(case((engaged, Feedback.item_id)))).label("clicks"),
            func.min(case((engaged, Feedback.position))).label("best"),
            func.max(case((Feedback.kind == "purchase", 1), else_=0)).label("purchased"),
            func.sum(func.coalesce(Feedback.gain, 0.0)).label("gain"),
        )
        .join(Impression, Impression.recommendation_id == Feedback.recommendation_id)
        .where(Impression.experiment_id == experiment_id)
        .group_by(Feedback.recommendation_id)
        .subquery()
    )
    rr = case((per_list.c.best.is_not(None), literal(1.0) / per_list.c.best), else_=0.0)
    gain = func.coalesce(per_list.c.gain, 0.0)
    stmt = (
        select(
            Impression.arm, func.count(), func.sum(Impression.k), func.coalesce(func.sum(per_list.c.clicks), 0),
            func.count(per_list.c.best), func.coalesce(func.sum(per_list.c.purchased), 0),
            func.coalesce(func.sum(rr), 0.0), func.coalesce(func.sum(rr * rr), 0.0),
            func.coalesce(func.sum(gain), 0.0), func.coalesce(func.sum(gain * gain), 0.0),
        )
        .select_from(Impression)
        .outerjoin(per_list, per_list.c.rid == Impression.recommendation_id)
        .where(Impression.experiment_id == experiment_id, Impression.shadow.is_(False))
        .group_by(Impression.arm)
        .order_by(Impression.arm)
    )
    shadows = dict(connection.execute(
        select(Impression.arm, func.count()).where(Impression.experiment_id == experiment_id, Impression.shadow.is_(True))
        .group_by(Impression.arm)).all())
    arms = {row[0]: ArmAggregate(row[0], int(row[1]), int(row[2] or 0), int(row[3]), int(row[4]), int(row[5]),
                                 float(row[6]), float(row[7]), float(row[8]), float(row[9]), int(shadows.get(row[0], 0)))
            for row in connection.execute(stmt).all()}
    for arm, n in shadows.items():
        if arm not in arms:
            arms[arm] = ArmAggregate(arm, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, int(n))
    return [arms[a] for a in sorted(arms)]


@dataclass(frozen=True)
class InterleavingCredit:
    """Interleaved impressions by which arm's picks earned more engaged events."""

    impressions: int
    wins: dict[str, int]
    ties: int  # clicked, both arms credited equally
    no_clicks: int


def interleaving_credit(db: Session | Connection, experiment_id: str, arms: tuple[str, str]) -> InterleavingCredit:
    """Team-draft credit, counted in SQL: per impression, the engaged events on each arm's picks; then how
    many impressions each arm won."""
    a, b = arms
    engaged = Feedback.kind.in_(ENGAGED_KINDS)
    per_list = (
        select(
            func.count(distinct(case((engaged & (Feedback.team == a), Feedback.item_id)))).label("a"),
            func.count(distinct(case((engaged & (Feedback.team == b), Feedback.item_id)))).label("b"),
        )
        .join(Impression, Impression.recommendation_id == Feedback.recommendation_id)
        .where(Impression.experiment_id == experiment_id, Impression.shadow.is_(False))
        .group_by(Feedback.recommendation_id)
        .subquery()
    )
    connection = core_connection(db)
    won_a, won_b, tied = connection.execute(select(
        func.coalesce(func.sum(case((per_list.c.a > per_list.c.b, 1), else_=0)), 0),
        func.coalesce(func.sum(case((per_list.c.b > per_list.c.a, 1), else_=0)), 0),
        func.coalesce(func.sum(case(((per_list.c.a == per_list.c.b) & (per_list.c.a > 0), 1), else_=0)), 0),
    )).one()
    total = connection.scalar(select(func.count()).select_from(Impression).where(
        Impression.experiment_id == experiment_id, Impression.shadow.is_(False)))
    total = int(total or 0)
    return InterleavingCredit(total, {a: int(won_a), b: int(won_b)}, int(tied), total - int(won_a) - int(won_b) - int(tied))
