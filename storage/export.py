"""Every stored interaction as one ``Interactions``, on the rating scale stored with the data: what the
trainer's ``--from-db`` trains on (``trainer.sources``), read through ``crud`` like every other query."""

from __future__ import annotations

from typing import Callable

import numpy as np

from errors import DataError, UserError
from interactions import Interactions
from interactions.files import interactions_from_columns
from interactions.rows import implicit_as_rating, keep_latest_pairs
from rating_scale import RatingScale
from storage import crud
from storage.session import make_engine, redacted


def stored_interactions(url: str, default_scale: Callable[[], RatingScale]) -> tuple[Interactions, str]:
    """Every stored interaction (PostgreSQL, SQLite, ... by URL), and where its rating scale was declared.

    The scale is the one stored with the data (``python -m service migrate`` records the
    service's ``RATING_SCALE``), else ``default_scale()``, asked only then; never the ratings'
    min and max. A stored rating off it is a ``DataError`` naming how many and one of them. Each stored
    interaction becomes a model row by ``interactions.rows``: implicit feedback is a positive,
    and one row per (user, item), the latest.
    """
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    where = redacted(url)
    try:
        engine = make_engine(url)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise UserError(f"--database-url {where!r} is not a usable database URL: {exc}") from None
    try:
        with engine.connect() as connection:
            declared = crud.declared_rating_scale(connection)
            frame = crud.every_interaction(connection)
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        raise DataError(f"cannot read interactions from {where}: {first} (did you run `python -m service migrate`?)") from None
    finally:
        engine.dispose()
    if frame.empty:
        raise DataError(f"the database {where} has no interactions to train on")
    if declared is not None:
        scale, origin = declared, "stored with the data"
    else:
        scale, origin = default_scale(), "the RATING_SCALE setting: the database stores none"

    ratings = frame["rating"].to_numpy(dtype=np.float64)
    missing = np.isnan(ratings)
    rated = frame[~missing]
    refusal = scale.refusal(ratings[~missing], f"the database {where}", lambda n: (
        "user {!r}, item {!r}, rating {:g}".format(*rated.iloc[n][["user", "item", "rating"]])))
    if refusal:
        raise DataError(f"{refusal}; nothing was trained (delete or fix those rows, or declare a scale that has them)")
    inter = interactions_from_columns(
        frame["user"].astype(str).to_numpy(),
        frame["item"].astype(str).to_numpy(),
        implicit_as_rating(ratings, scale).astype(np.float32),
        frame["timestamp"].to_numpy(dtype=np.int64),
        name="database",
        rating_scale=scale,
    )
    keep, dropped = keep_latest_pairs(inter.users, inter.items, inter.timestamps)
    if dropped:
        inter = Interactions(
            users=inter.users[keep], items=inter.items[keep], ratings=inter.ratings[keep],
            timestamps=inter.timestamps[keep], user_ids=inter.user_ids, item_ids=inter.item_ids,
            name=inter.name, rating_scale=inter.rating_scale,
        )
    return inter, origin
