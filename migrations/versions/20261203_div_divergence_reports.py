"""divergence reports

Revision ID: div1
Revises: health_0001
Create Date: 2026-12-03 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "div1"
down_revision: str | None = "health_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "divergence_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("through", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("differences", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_divergence_reports")),
    )
    op.create_index(
        op.f("ix_divergence_reports_through"), "divergence_reports", ["through"], unique=False
    )
    op.create_index(
        op.f("ix_divergence_reports_created_at"), "divergence_reports", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_divergence_reports_created_at"), table_name="divergence_reports")
    op.drop_index(op.f("ix_divergence_reports_through"), table_name="divergence_reports")
    op.drop_table("divergence_reports")
