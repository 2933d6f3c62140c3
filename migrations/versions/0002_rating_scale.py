"""The declared rating scale, stored with the data (one row, written by ``python -m service migrate``).

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rating_scale",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scale", sa.String(length=64), nullable=False),
        sa.Column("positive_threshold", sa.Float(), nullable=True),
        sa.Column("declared_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rating_scale")),
    )


def downgrade() -> None:
    op.drop_table("rating_scale")
