"""decision runs: one decision per closed session

Revision ID: exec_0003
Revises: data_0001
Create Date: 2026-12-03 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'exec_0003'
down_revision: str | None = 'data_0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('decision_runs',
    sa.Column('session_date', sa.Date(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('session_date', name=op.f('pk_decision_runs'))
    )


def downgrade() -> None:
    op.drop_table('decision_runs')
