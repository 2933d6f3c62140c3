"""The database schema: users, items, their interactions, the rating scale they were written under,
the idempotency keys of writes, and online evaluation's experiments, impressions and feedback (SQLAlchemy 2 ORM).

Alembic owns the schema (``migrations/``); these classes describe it for queries and
for the trainer's ``--from-db``. External ids are the dataset's own ids, as strings.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, UniqueConstraint, func, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY, so the big key is INTEGER there.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def epoch_seconds() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    # Named constraints, so migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    title: Mapped[str | None] = mapped_column(String, nullable=True)
    # "metadata" is reserved on declarative classes, so the attribute has another name.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Interaction(Base):
    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("user_id", "item_id"),  # one per pair: a re-rating replaces the older one
        # implied by the pair's; kept a release for the previous one's ON CONFLICT (user_id, item_id, timestamp)
        UniqueConstraint("user_id", "item_id", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: implicit feedback (a click, a view)
    timestamp: Mapped[int] = mapped_column(BigInteger, default=epoch_seconds)  # epoch seconds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeclaredRatingScale(Base):
    """The deployment's rating scale (``RATING_SCALE``, ``POSITIVE_THRESHOLD``), stored with the ratings it
    governs: one row, written by ``python -m service migrate``; ``trainer train --from-db`` trains on it."""

    __tablename__ = "rating_scale"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    scale: Mapped[str] = mapped_column(String(64))  # as rating_scale.RatingScale prints it: "1:5:1", "implicit"
    positive_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)  # None on an implicit scale
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IdempotencyKey(Base):
    """A POST /interactions answer under the client's ``Idempotency-Key``, written in the batch's own
    transaction: a retry of the same body returns it and writes nothing (until ``expires_at``)."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the API key used: keys never mix
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)  # epoch seconds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Experiment(Base):
    """An A/B or interleaving experiment: ``definition`` is its arms, shares, seed, holdout and shadow flag
    (``service.experiments.from_config`` reads it); running from ``started_at`` until ``stopped_at``."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "ab" | "interleaving"
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the always-valid p-values at the last look ({challenger: p}): the sequential test's running minimum
    sequential_p_values: Mapped[dict[str, float] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


_IN_AN_EXPERIMENT = text("experiment_id IS NOT NULL")


class Impression(Base):
    """One recommendation list served (or, ``shadow``, scored and not served): what a user was shown, by which arm."""

    __tablename__ = "impressions"
    __table_args__ = (
        # per-arm aggregates; only lists served in an experiment, a row outside one costs no entry
        # (bench/impression_writer.py; bench/RESULTS.md, "What recording impressions costs")
        Index("ix_impressions_experiment_id_arm", "experiment_id", "arm", sqlite_where=_IN_AN_EXPERIMENT,
              postgresql_where=_IN_AN_EXPERIMENT),
    )

    recommendation_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # a UUIDv7 in hex (time-ordered), in the response
    user_id: Mapped[str] = mapped_column(String(255))  # the external id (a user may have no row in users yet)
    experiment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    arm: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    items: Mapped[list[str]] = mapped_column(JSON)  # external item ids, best first
    teams: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # interleaving: the arm of each position
    k: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A user's impressions are a chain from their head (``ImpressionHead``), newest written first, not an index on
    # (user_id, created_at): that index cost the SQLite writer a leaf per user a flush (bench/RESULTS.md, "What
    # recording impressions costs"). ``newest_at``: the newest created_at of this one and all before it, where later
    # than its own (NULL otherwise), so that a walk back to a time can stop (``storage.crud.online.recent_lists``).
    prev_recommendation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    newest_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ImpressionHead(Base):
    """A user's newest impression written (where the chain of their impressions starts)."""

    __tablename__ = "impression_heads"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(String(32))
    newest_ns: Mapped[int] = mapped_column(BigInteger)  # the newest created_at in the chain, as epoch nanoseconds


class Feedback(Base):
    """An event on an item of a served list: from ``POST /feedback``, or an interaction attributed to the list."""

    __tablename__ = "feedback"
    # a retried batch (or the same click posted and then written as an interaction) is stored once
    __table_args__ = (UniqueConstraint("recommendation_id", "item_id", "kind"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(String(32), index=True)
    item_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # click | rating | purchase | dismiss
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # a rating's value
    position: Mapped[int] = mapped_column(Integer)  # 1-based rank of the item in the list (MRR)
    # a rating's discounted gain, value / log2(rank + 1) (service.experiments.stats), stored: SQLite may lack log2
    gain: Mapped[float | None] = mapped_column(Float, nullable=True)
    team: Mapped[str | None] = mapped_column(String(64), nullable=True)  # interleaving: the arm credited
    source: Mapped[str] = mapped_column(String(16))  # "feedback" | "interaction"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
