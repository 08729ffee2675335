"""heartbeats: when a trading cycle last ran, read by /health and the cycle watch

Revision ID: beat_0001
Revises: exec_0003
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'beat_0001'
down_revision: str | None = 'exec_0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('heartbeats',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_heartbeats'))
    )


def downgrade() -> None:
    op.drop_table('heartbeats')
