"""The reads: a user's history (the request path), counts, the dashboard's aggregates, the stored rating scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from rating_scale import RatingScale
from storage.crud.common import core_connection, reads
from storage.tables import DeclaredRatingScale, Interaction, Item, User

@dataclass
class History:
    """Interactions as parallel arrays (one row per stored interaction)."""

    user_ids: np.ndarray  # external user ids (object)
    item_ids: np.ndarray  # external item ids (object)
    ratings: np.ndarray  # float64, NaN for implicit feedback
    timestamps: np.ndarray  # int64 epoch seconds

    def __len__(self) -> int:
        return len(self.item_ids)

    def of(self, user_id: str) -> History:
        keep = self.user_ids == user_id
        return History(self.user_ids[keep], self.item_ids[keep], self.ratings[keep], self.timestamps[keep])


# Built once: constructing a statement cost more per request than running it.
_HISTORY_COLUMNS = (
    select(Item.external_id, Interaction.rating, Interaction.timestamp)
    .select_from(Interaction)
    .join(User, User.id == Interaction.user_id)
    .join(Item, Item.id == Interaction.item_id)
)
ONE_USER_HISTORY: Select = _HISTORY_COLUMNS.where(User.external_id == bindparam("user_id"))
USERS_HISTORY: Select = _HISTORY_COLUMNS.add_columns(User.external_id).where(
    User.external_id.in_(bindparam("user_ids", expanding=True))
)


def _as_history(rows: Sequence[Any], user_id: str | None = None) -> History:
    """Rows of (item, rating, timestamp) for ``user_id``, or of (item, rating, timestamp, user)."""
    if not rows:
        empty = np.array([], dtype=object)
        return History(empty, empty, np.array([], dtype=np.float64), np.array([], dtype=np.int64))
    columns = list(zip(*rows))
    users = np.full(len(rows), user_id, dtype=object) if user_id is not None else np.array(columns[3], dtype=object)
    return History(
        users,
        np.array(columns[0], dtype=object),
        np.array(columns[1], dtype=np.float64),  # None (implicit) becomes NaN
        np.array(columns[2], dtype=np.int64),
    )


def user_history(db: Session | Connection, user_id: str) -> History:
    """All of one user's interactions, in one query."""
    return _as_history(core_connection(db).execute(ONE_USER_HISTORY, {"user_id": user_id}).all(), user_id)


def user_histories(db: Session | Connection, user_ids: Sequence[str]) -> History:
    """All interactions of several users, in one query."""
    return _as_history(core_connection(db).execute(USERS_HISTORY, {"user_ids": sorted(set(user_ids))}).all())


# Every stored interaction with its external ids, in the order stored: what the trainer's --from-db reads
EVERY_INTERACTION: Select = (
    select(User.external_id.label("user"), Item.external_id.label("item"), Interaction.rating.label("rating"),
           Interaction.timestamp.label("timestamp"))
    .join(User, Interaction.user_id == User.id)
    .join(Item, Interaction.item_id == Item.id)
    .order_by(Interaction.id)
)


def every_interaction(db: Session | Connection) -> Any:
    """A pandas frame of every stored interaction: user, item (external ids), rating (None: implicit), timestamp."""
    import pandas as pd

    result = core_connection(db).execute(EVERY_INTERACTION)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def declared_rating_scale(db: Session | Connection) -> RatingScale | None:
    """The rating scale stored with the data (``record_rating_scale``); None when none is."""
    row = core_connection(db).execute(select(DeclaredRatingScale.scale, DeclaredRatingScale.positive_threshold)).first()
    return None if row is None else RatingScale.parse(row.scale, row.positive_threshold)


def item_titles(db: Session | Connection, item_ids: Sequence[str]) -> dict[str, str]:
    if not item_ids:
        return {}
    stmt = select(Item.external_id, Item.title).where(Item.external_id.in_(item_ids), Item.title.is_not(None))
    return dict(core_connection(db).execute(stmt).all())


def ping(session: Session) -> None:
    with reads(session) as connection:  # a connection of its own each call: ``retry_if_dropped`` can repeat it
        connection.execute(select(1)).scalar_one()


def counts(session: Session) -> dict[str, int]:
    return {
        "users": session.scalar(select(func.count()).select_from(User)),
        "items": session.scalar(select(func.count()).select_from(Item)),
        "interactions": session.scalar(select(func.count()).select_from(Interaction)),
    }


# ---- the dashboard's reads: aggregates computed in SQL, a few rows back -------------------------
def rating_histogram(db: Session | Connection) -> list[tuple[float | None, int]]:
    """(rating, interactions) per distinct rating, None (implicit feedback) first."""
    stmt = select(Interaction.rating, func.count()).group_by(Interaction.rating).order_by(Interaction.rating.is_not(None), Interaction.rating)
    return [(r, n) for r, n in core_connection(db).execute(stmt).all()]


def interactions_over_time(db: Session | Connection, buckets: int = 40) -> tuple[int, list[tuple[int, int]]]:
    """The interactions' timestamps in ``buckets`` equal spans: (span in seconds, [(span start, interactions)])."""
    connection = core_connection(db)
    first, last = connection.execute(select(func.min(Interaction.timestamp), func.max(Interaction.timestamp))).one()
    if first is None:
        return 0, []
    width = max(1, -(-(int(last) - int(first) + 1) // buckets))  # ceiling: the last timestamp falls in the last span
    bucket = (Interaction.timestamp - int(first)) // width  # SQLAlchemy's floor division: integer "/" on both databases
    rows = connection.execute(select(bucket.label("b"), func.count()).group_by("b").order_by("b")).all()
    return width, [(int(first) + int(b) * width, n) for b, n in rows]


def item_interaction_counts(db: Session | Connection) -> list[int]:
    """Interactions per item that has any, most first: the popularity long tail."""
    n = func.count().label("n")
    stmt = select(n).select_from(Interaction).group_by(Interaction.item_id).order_by(n.desc())
    return list(core_connection(db).execute(stmt).scalars())


def search_items(db: Session | Connection, text_: str, limit: int = 20) -> list[tuple[str, str | None]]:
    """Items whose id is ``text_`` (first) or whose title contains it, any case: (id, title)."""
    exact = Item.external_id == text_
    stmt = (
        select(Item.external_id, Item.title)
        .where(exact | Item.title.icontains(text_, autoescape=True))
        .order_by(exact.desc(), Item.title, Item.external_id)
        .limit(limit)
    )
    return [(i, t) for i, t in core_connection(db).execute(stmt).all()]


def titled_history(db: Session | Connection, user_id: str, limit: int) -> tuple[int, list[tuple[str, str | None, float | None, int]]]:
    """A user's interaction count and latest ``limit`` interactions, newest first: (item, title, rating, timestamp)."""
    connection = core_connection(db)
    stmt = (
        select(Item.external_id, Item.title, Interaction.rating, Interaction.timestamp)
        .select_from(Interaction).join(User, User.id == Interaction.user_id).join(Item, Item.id == Interaction.item_id)
        .where(User.external_id == user_id).order_by(Interaction.timestamp.desc(), Item.external_id).limit(limit)
    )
    total = connection.scalar(
        select(func.count()).select_from(Interaction).join(User, User.id == Interaction.user_id).where(User.external_id == user_id)
    )
    return int(total or 0), [tuple(row) for row in connection.execute(stmt).all()]
