"""Load a dataset (``interactions.Interactions``) into the database through ``crud``, in bulk."""

from __future__ import annotations

import gc

import numpy as np

from interactions import Interactions
from storage import crud
from storage.session import make_engine, make_session_factory


def seed_interactions(database_url: str, inter: Interactions) -> dict[str, int]:
    """Users, items (titles where the dataset has them) and interactions in one transaction; idempotent.
    Interactions on an implicit scale are stored without a rating (implicit feedback)."""
    user_ids = np.asarray(inter.user_ids).astype(str)[inter.users]
    item_ids = np.asarray(inter.item_ids).astype(str)[inter.items]
    titles = {str(k): {"title": v} for k, v in (inter.item_titles or {}).items()}
    ratings = [None] * len(inter) if inter.rating_scale.implicit else inter.ratings.astype(float).tolist()
    timestamps = inter.timestamps.tolist() if inter.timestamps is not None else [None] * len(inter)
    engine = make_engine(database_url)
    # A load is millions of tuples and dicts alive until its commit, and with the cyclic
    # collector on every full collection walks all of them again, a cost that grows with the load
    # (bench/RESULTS.md, "Figures moved out"). The load makes no reference cycles; reference counting frees it all.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with make_session_factory(engine)() as session:
            result = crud.store_interactions(session, user_ids.tolist(), item_ids.tolist(), ratings, timestamps, titles)
            crud.refresh_statistics(session)
            return result
    finally:
        if collecting:
            gc.enable()
        engine.dispose()
