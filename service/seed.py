"""Load a dataset (``interactions.Interactions``) into the database through ``crud``, in bulk."""

from __future__ import annotations

import gc

import numpy as np

from interactions import Interactions
from storage import crud
from storage.session import make_engine, make_session_factory


SEED_CHUNK_ROWS = 5_000_000  # interactions a transaction: a load's memory grows with its rows (bench/RESULTS.md, issue 26)


def seed_interactions(database_url: str, inter: Interactions, chunk_rows: int = SEED_CHUNK_ROWS) -> dict[str, int]:
    """Users, items (titles where the dataset has them) and interactions, in transactions of about ``chunk_rows``
    interactions, each user's in one (so the latest of a pair wins as in one load); idempotent: a rerun after a
    failure stores what is missing. Interactions on an implicit scale are stored without a rating (implicit feedback)."""
    order = np.argsort(inter.users, kind="stable")  # a user's rows together, in the order given
    by_user = inter.users[order]
    starts = np.unique(np.append(0, np.searchsorted(by_user, by_user[:: max(1, chunk_rows)])))  # at a user's first row
    titles = {str(k): {"title": v} for k, v in (inter.item_titles or {}).items()}
    totals: dict[str, int] = {}
    engine = make_engine(database_url)
    # A load is millions of tuples and dicts alive until its commit, and with the cyclic
    # collector on every full collection walks all of them again, a cost that grows with the load
    # (bench/RESULTS.md, "Figures moved out"). The load makes no reference cycles; reference counting frees it all.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for start, end in zip(starts, [*starts[1:], len(order)]):
            rows = order[start:end]
            user_ids = np.asarray(inter.user_ids).astype(str)[inter.users[rows]]
            item_ids = np.asarray(inter.item_ids).astype(str)[inter.items[rows]]
            ratings = [None] * len(rows) if inter.rating_scale.implicit else inter.ratings[rows].astype(float).tolist()
            timestamps = inter.timestamps[rows].tolist() if inter.timestamps is not None else [None] * len(rows)
            # an item's title goes with the transaction that creates it (the first of its rows; the last for the rest)
            last = end == len(order) or not titles
            named = titles if last else {i: titles.pop(i) for i in titles.keys() & set(item_ids.tolist())}
            with make_session_factory(engine)() as session:
                result = crud.store_interactions(session, user_ids.tolist(), item_ids.tolist(), ratings, timestamps, named)
            for key, value in result.items():
                totals[key] = totals.get(key, 0) + value
        with make_session_factory(engine)() as session:
            crud.refresh_statistics(session)
        return totals
    finally:
        if collecting:
            gc.enable()
        engine.dispose()
