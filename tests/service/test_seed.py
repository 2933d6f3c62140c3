"""``service.seed``: a load in transactions of a bounded size stores every row once, on both backends."""

from __future__ import annotations

import numpy as np
from sqlalchemy import text

from interactions import Interactions
from service.seed import seed_interactions
from storage.migrate import upgrade_to_head
from storage.session import make_engine


def _interactions() -> Interactions:
    """Users in no particular order, a few rows each; item 2 has a title and appears in several users' rows."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 9, size=60).astype(np.int32)
    items = rng.integers(0, 12, size=60).astype(np.int32)
    keep = np.unique(users * 100 + items, return_index=True)[1]  # one row per (user, item)
    return Interactions(users[keep], items[keep], rng.integers(1, 6, size=len(keep)).astype(np.float32),
                        rng.integers(1_700_000_000, 1_700_100_000, size=len(keep)), np.array([f"u{u}" for u in range(9)]),
                        np.array([f"i{i}" for i in range(12)]), item_titles={"i2": "Two"})


def _contents(database_url: str) -> tuple[list, list]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT u.external_id, i.external_id, x.rating, x.timestamp FROM interactions x "
                                     "JOIN users u ON u.id = x.user_id JOIN items i ON i.id = x.item_id")).all()
            items = conn.execute(text("SELECT external_id, title FROM items")).all()
        return sorted(map(tuple, rows)), sorted(map(tuple, items))
    finally:
        engine.dispose()


def test_a_load_in_small_transactions_stores_every_row_once_and_again_nothing(empty_backend):
    inter = _interactions()
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    counts = seed_interactions(empty_backend.database_url, inter, chunk_rows=7)  # 9 users in several transactions
    named = sorted(set(inter.items.tolist()) | {2})  # the items of some row, and the titled one
    assert (counts["inserted"], counts["new_users"], counts["new_items"]) == (len(inter), 9, len(named))
    rows, items = _contents(empty_backend.database_url)
    assert rows == sorted((f"u{u}", f"i{i}", float(r), int(t))
                          for u, i, r, t in zip(inter.users, inter.items, inter.ratings, inter.timestamps))
    assert items == sorted((f"i{i}", "Two" if i == 2 else None) for i in named)
    again = seed_interactions(empty_backend.database_url, inter, chunk_rows=7)
    assert (again["inserted"], again["duplicates"], again["new_users"]) == (0, len(inter), 0)
