"""missing signals: each universe symbol a cycle had no signal for, and why

Revision ID: data_0001
Revises: div1
Create Date: 2026-12-03 06:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'data_0001'
down_revision: str | None = 'div1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('missing_signals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('symbol', sa.String(length=16), nullable=False),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_missing_signals'))
    )
    op.create_index(op.f('ix_missing_signals_as_of'), 'missing_signals', ['as_of'], unique=False)
    op.create_index(op.f('ix_missing_signals_created_at'), 'missing_signals', ['created_at'], unique=False)
    op.create_index(op.f('ix_missing_signals_symbol'), 'missing_signals', ['symbol'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_missing_signals_symbol'), table_name='missing_signals')
    op.drop_index(op.f('ix_missing_signals_created_at'), table_name='missing_signals')
    op.drop_index(op.f('ix_missing_signals_as_of'), table_name='missing_signals')
    op.drop_table('missing_signals')
