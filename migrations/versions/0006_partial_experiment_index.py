"""Impressions' per-arm index holds only the lists served in an experiment (most lists are served outside one).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IN_AN_EXPERIMENT = sa.text("experiment_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_impressions_experiment_id_arm", table_name="impressions")
    op.create_index("ix_impressions_experiment_id_arm", "impressions", ["experiment_id", "arm"], unique=False,
                    sqlite_where=_IN_AN_EXPERIMENT, postgresql_where=_IN_AN_EXPERIMENT)


def downgrade() -> None:
    op.drop_index("ix_impressions_experiment_id_arm", table_name="impressions")
    op.create_index("ix_impressions_experiment_id_arm", "impressions", ["experiment_id", "arm"], unique=False)
