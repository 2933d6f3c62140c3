"""One interaction per (user, item): a re-rating replaces the older one.

Existing repeats of a pair are collapsed to the latest (highest timestamp, ties to the
highest id: the rule of ``interactions.rows``, which the trainer applied on reading).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_interactions = sa.table("interactions", sa.column("id"), sa.column("user_id"), sa.column("item_id"), sa.column("timestamp"))


def upgrade() -> None:
    rank = sa.func.row_number().over(
        partition_by=(_interactions.c.user_id, _interactions.c.item_id),
        order_by=(_interactions.c.timestamp.desc(), _interactions.c.id.desc()),
    )
    ranked = sa.select(_interactions.c.id, rank.label("rank")).subquery()
    older = sa.select(ranked.c.id).where(ranked.c.rank > 1)
    op.execute(_interactions.delete().where(_interactions.c.id.in_(older)))
    # (user, item, timestamp) stays unique too for a release: the previous one's writes name it in ON CONFLICT
    with op.batch_alter_table("interactions") as batch:
        batch.create_unique_constraint("uq_interactions_user_id_item_id", ["user_id", "item_id"])


def downgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.drop_constraint("uq_interactions_user_id_item_id", type_="unique")
