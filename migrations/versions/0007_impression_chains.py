"""A user's impressions are found by a chain from their newest one, not by a (user_id, created_at) index.

Each impression names the one written before it for the same user (``prev_recommendation_id``), and
``impression_heads`` names each user's newest. The index wrote one entry per impression into its user's
leaf, and a flush dirtied a leaf per user in it: about 40% of the SQLite writer (bench/RESULTS.md, "What
recording impressions costs"). The existing impressions are chained in the order they were created.

During a rolling upgrade, a replica of the release before still writes its rows outside any chain: an
interaction is not attributed to those lists (feedback naming their recommendation_id still is), and
that replica's own attribution reads, without the index, scan the table until it is replaced.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _epoch_ns(moment: datetime) -> int:
    """A stored time (SQLite's naive, in UTC) as integer nanoseconds since the epoch, exact to its microsecond."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def upgrade() -> None:
    op.add_column("impressions", sa.Column("prev_recommendation_id", sa.String(length=32), nullable=True))
    op.add_column("impressions", sa.Column("newest_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "impression_heads",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("recommendation_id", sa.String(length=32), nullable=False),
        sa.Column("newest_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_impression_heads")),
    )
    # chained oldest first, so each impression is as new as any before it: newest_at stays NULL
    op.execute("""
        UPDATE impressions SET prev_recommendation_id = chained.prev
        FROM (SELECT recommendation_id AS id,
                     LAG(recommendation_id) OVER (PARTITION BY user_id ORDER BY created_at, recommendation_id) AS prev
              FROM impressions) AS chained
        WHERE impressions.recommendation_id = chained.id AND chained.prev IS NOT NULL
    """)
    impressions = sa.table("impressions", sa.column("user_id", sa.String), sa.column("recommendation_id", sa.String),
                           sa.column("created_at", sa.DateTime(timezone=True)))
    ranked = sa.select(impressions, sa.func.row_number().over(
        partition_by=impressions.c.user_id,
        order_by=(impressions.c.created_at.desc(), impressions.c.recommendation_id.desc())).label("newest")).subquery()
    heads = [{"user_id": user, "recommendation_id": rid, "newest_ns": _epoch_ns(created)} for user, rid, created in
             op.get_bind().execute(sa.select(ranked.c.user_id, ranked.c.recommendation_id, ranked.c.created_at)
                                   .where(ranked.c.newest == 1))]
    if heads:
        op.bulk_insert(sa.table("impression_heads", sa.column("user_id"), sa.column("recommendation_id"),
                                sa.column("newest_ns")), heads)
    op.drop_index("ix_impressions_user_id_created_at", table_name="impressions")


def downgrade() -> None:
    op.create_index("ix_impressions_user_id_created_at", "impressions", ["user_id", "created_at"], unique=False)
    op.drop_table("impression_heads")
    with op.batch_alter_table("impressions") as batch:
        batch.drop_column("newest_at")
        batch.drop_column("prev_recommendation_id")
