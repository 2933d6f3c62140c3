"""The one data-access layer: every query the service, the seed command and the trainer's ``--from-db`` make.

Writes are bulk statements built with SQLAlchemy (``INSERT ... ON CONFLICT`` in the
PostgreSQL and SQLite dialects), never SQL from strings. A batch of interactions
is one transaction: its new users and items are created in it, and nothing is written
if any statement fails.

The modules: ``reading`` (histories, counts, the dashboard's aggregates), ``writing`` (interactions in
bulk, idempotency keys, the declared rating scale), ``online`` (experiments, impressions, feedback)
and ``common`` (what they share). Callers use this namespace: ``crud.user_history(...)``.
"""

from storage.crud.common import reads  # noqa: F401
from storage.crud.reading import (  # noqa: F401
    History, counts, declared_rating_scale, every_interaction, interactions_over_time, item_interaction_counts,
    item_titles, ping, rating_histogram, search_items, titled_history, user_histories, user_history,
)
from storage.crud.writing import (  # noqa: F401
    IdempotencyClaim, IdempotencyKeyTaken, InteractionBatch, idempotent_answer, record_rating_scale,
    refresh_statistics, store_interaction_batches, store_interactions,
)
