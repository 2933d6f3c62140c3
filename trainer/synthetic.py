"""Seeded synthetic interaction logs shaped like MovieLens-20M, for scale benchmarks.

The defaults give ML-20M's size (140k users, 20k items, 20M ratings). The shape:
- item popularity is Zipf-Mandelbrot, p(rank) ∝ (rank + q)^-a with a = 1.2 and
  q = n_items / 200, so the most-rated item has ~60k of 20M ratings (ML-20M: 67k);
- user activity is log-normal (σ = 1.2, ML-20M's mean/median ratio of ~2.1) above a
  floor of 20 ratings per user (ML-20M's rule), capped at half the catalogue;
- each user's items are drawn without replacement by popularity (so (user, item) pairs
  are unique), popular ones tending to come first, as MovieLens' sign-up page shows them;
- rating = round(3.2 + b_user + b_item + noise) clipped to 1..5, where popular items
  have higher b_item; timestamps strictly increase within each user.
Everything is vectorised, no loop per user (its time for 20M rows: bench/RESULTS.md, "ML-20M scale").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from errors import UserError
from interactions import STARS, Interactions

_FIRST_TIME = 946_684_800  # 2000-01-01 UTC
_LAST_TIME = 1_420_070_400  # 2015-01-01 UTC
_MAX_ROUNDS = 200


def generate(
    n_users: int = 140_000,
    n_items: int = 20_000,
    n_interactions: int = 20_000_000,
    *,
    seed: int = 0,
    popularity_exponent: float = 1.2,
    activity_sigma: float = 1.2,
    min_per_user: int = 20,
) -> Interactions:
    """A reproducible log: the same arguments give the same rows, in the same order.

    Rows are grouped by user in time order. Ids are "1".."n_users" and "1".."n_items"; the
    item space is the full ``n_items`` even if a tail item happens to get no rating.
    """
    cap = n_items // 2  # nobody rates more than half the catalogue (ML-20M's heaviest user: a third)
    if n_users < 1 or n_items < 2 or n_interactions < n_users:
        raise UserError("synthetic data needs at least 1 user, 2 items and one interaction per user")
    if n_interactions > n_users * cap:
        raise UserError(
            f"{n_interactions:,} interactions do not fit {n_users:,} users rating at most {cap:,} items each"
        )
    rng = np.random.default_rng(seed)

    popularity = _item_popularity(rng, n_items, popularity_exponent)
    counts = _user_activity(rng, n_users, n_interactions, cap, activity_sigma, min_per_user)
    users, items = _distinct_items_per_user(rng, counts, popularity)
    timestamps = _timestamps(rng, counts)
    ratings = _ratings(rng, users, items, popularity)
    return Interactions(
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        ratings=ratings,
        timestamps=timestamps,
        user_ids=np.arange(1, n_users + 1).astype(str),
        item_ids=np.arange(1, n_items + 1).astype(str),
        name=f"synthetic-{n_users}x{n_items}-seed{seed}",
        rating_scale=STARS,
    )


def write_parquet(interactions: Interactions, path: str | Path) -> Path:
    """Write columns user, item, rating, timestamp (ids as integers when they all are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "user": _id_column(interactions.user_ids)[interactions.users],
        "item": _id_column(interactions.item_ids)[interactions.items],
        "rating": interactions.ratings.astype(np.float32),
    }
    if interactions.timestamps is not None:
        columns["timestamp"] = interactions.timestamps.astype(np.int64)
    pq.write_table(pa.table(columns), path)
    return path


def _id_column(ids: np.ndarray) -> np.ndarray:
    text = ids.astype(str)
    return text.astype(np.int64) if np.char.isdigit(text).all() else text


def _item_popularity(rng: np.random.Generator, n_items: int, exponent: float) -> np.ndarray:
    """Probability of each item, Zipf-Mandelbrot over a random ranking of the items."""
    rank = np.arange(1, n_items + 1, dtype=np.float64)
    by_rank = (rank + n_items / 200) ** -exponent
    popularity = np.empty(n_items)
    popularity[rng.permutation(n_items)] = by_rank / by_rank.sum()
    return popularity


def _user_activity(
    rng: np.random.Generator, n_users: int, total: int, cap: int, sigma: float, floor: int
) -> np.ndarray:
    """Interactions per user: floor + log-normal share of the rest, capped, summing to ``total``."""
    floor = min(floor, total // n_users, cap)
    weight = rng.lognormal(0.0, sigma, n_users)
    counts = floor + np.floor(weight / weight.sum() * (total - floor * n_users)).astype(np.int64)
    counts = np.minimum(counts, cap)
    # Rounding and the cap leave some interactions over: hand them out by the same weights.
    while (short := total - int(counts.sum())) > 0:
        open_weight = np.where(counts < cap, weight, 0.0)
        counts = np.minimum(counts + rng.multinomial(short, open_weight / open_weight.sum()), cap)
    return counts


def _distinct_items_per_user(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items per user, drawn by popularity without replacement.

    Returns rows grouped by user, each user's items in draw order. The expected number
    of distinct items after m draws with replacement, E(m) = Σ_i 1 - (1 - p_i)^m, tells
    how many draws a user needs. Light users draw with replacement and drop repeats
    (cheap: few repeats); users who would need more draws than half the catalogue take
    the order of an exponential race over all items instead (same distribution).
    """
    n_users, n_items = len(counts), len(popularity)
    grid = np.unique(np.geomspace(1, 64 * n_items, 400).astype(np.int64)).astype(np.float64)
    log_miss = np.log1p(-popularity)
    expected = np.array([-np.expm1(m * log_miss).sum() for m in grid])
    heavy = np.interp(counts, expected, grid) > n_items / 2

    light_keys = _draw_until_distinct(rng, np.where(heavy, 0, counts), popularity, expected, grid)
    heavy_keys = _exponential_race(rng, np.flatnonzero(heavy), counts, popularity)
    key = np.concatenate([light_keys, heavy_keys])
    key = key[np.argsort(key // n_items, kind="stable")]  # sorted runs: a cheap merge; draw order kept
    return key // n_items, key % n_items


def _draw_until_distinct(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray, expected: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """Keys user * n_items + item: rounds of draws with replacement, keeping each user's first new items."""
    n_users, n_items = len(counts), len(popularity)
    sample = _inverse_cdf_sampler(popularity)
    have = np.zeros(n_users, dtype=np.int64)
    kept: list[np.ndarray] = []  # per round, in draw order
    seen: list[np.ndarray] = []  # the same keys sorted, for membership tests
    for _ in range(_MAX_ROUNDS):
        need = counts - have
        active = np.flatnonzero(need > 0)
        if active.size == 0:
            break
        draws = np.interp(counts[active], expected, grid) - np.interp(have[active], expected, grid)
        user = np.repeat(active, (np.ceil(1.1 * draws) + 2).astype(np.int64))
        key = user * n_items + sample(rng, user.size)
        for earlier in seen:
            at = np.minimum(np.searchsorted(earlier, key), earlier.size - 1)
            key = key[earlier[at] != key]
        key = key[_first_occurrences(key)]  # still grouped by user, in draw order
        user = key // n_items
        run_start = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        rank_in_user = np.arange(user.size) - np.repeat(run_start, np.diff(np.r_[run_start, user.size]))
        key = key[rank_in_user < need[user]]
        have += np.bincount(key // n_items, minlength=n_users)
        if key.size:  # an empty round has nothing to test against (and would index -1)
            kept.append(key)
            seen.append(np.sort(key))
    else:
        raise RuntimeError("synthetic sampling did not converge")  # cannot happen: heavy users go elsewhere
    return np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)


def _exponential_race(
    rng: np.random.Generator, users: np.ndarray, counts: np.ndarray, popularity: np.ndarray
) -> np.ndarray:
    """Each item arrives after Exp(1) / p_i; the first ``counts[u]`` arrivals are a popularity-weighted
    sample without replacement, in draw order (Efraimidis & Spirakis). Keys as above."""
    n_items = len(popularity)
    keys = []
    for chunk in np.array_split(users, max(1, users.size * n_items // (1 << 22))):  # ≤ 4M arrivals at a time
        arrival = rng.exponential(size=(chunk.size, n_items)) / popularity
        first_items = np.argsort(arrival, axis=1)[np.arange(n_items) < counts[chunk][:, None]]
        keys.append(np.repeat(chunk, counts[chunk]) * n_items + first_items)
    return np.concatenate(keys) if keys else np.empty(0, dtype=np.int64)


def _inverse_cdf_sampler(popularity: np.ndarray):
    """Item draws by inverse CDF; a 2^20-bucket table answers most draws without a search."""
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    buckets = 1 << 20
    table = np.searchsorted(cdf, np.arange(buckets + 1) / buckets, side="right").clip(max=len(cdf) - 1)

    def sample(rng: np.random.Generator, size: int) -> np.ndarray:
        u = rng.random(size)
        bucket = (u * buckets).astype(np.int64)
        items = table[bucket]
        straddles = table[bucket + 1] != items  # an item boundary falls inside this bucket
        items[straddles] = np.searchsorted(cdf, u[straddles], side="right")
        return items

    return sample


def _first_occurrences(key: np.ndarray) -> np.ndarray:
    """Ascending positions of the first occurrence of each value in ``key``.

    One fast unstable sort of (key, position) packed into an int64, instead of a stable argsort.
    """
    bits = max(1, int(key.size - 1).bit_length())
    if key.size and int(key.max()) >= 1 << (62 - bits):
        _, first = np.unique(key, return_index=True)
        return np.sort(first)
    packed = np.sort((key << bits) | np.arange(key.size, dtype=np.int64))
    value = packed >> bits
    is_first = np.r_[True, value[1:] != value[:-1]] if packed.size else np.zeros(0, dtype=bool)
    return np.sort(packed[is_first] & ((1 << bits) - 1))


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Per user: a start time, then gaps of ≥1 s over a log-normal active span (median a month)."""
    n_users = len(counts)
    span = np.clip(rng.lognormal(np.log(30 * 86_400), 1.5, n_users), 3_600, 3 * 365 * 86_400)
    start = rng.uniform(_FIRST_TIME, _LAST_TIME - span).astype(np.int64)
    mean_gap = np.repeat(span / counts, counts)
    gaps = 1 + np.floor(rng.exponential(1.0, mean_gap.size) * mean_gap).astype(np.int64)
    first_row = np.r_[0, np.cumsum(counts)[:-1]]
    gaps[first_row] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first_row], counts)
    return np.repeat(start, counts) + elapsed


def _ratings(rng: np.random.Generator, users: np.ndarray, items: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """round(μ + b_user + b_item + ε), 1..5; b_item grows with log popularity (liked films get seen)."""
    log_pop = np.log(popularity)
    item_bias = 0.2 * (log_pop - log_pop.mean()) / log_pop.std() + rng.normal(0.0, 0.35, popularity.size)
    user_bias = rng.normal(0.0, 0.45, int(users.max()) + 1)
    noise = rng.normal(0.0, 0.95, users.size)
    return np.clip(np.rint(3.2 + user_bias[users] + item_bias[items] + noise), 1, 5).astype(np.float32)
