"""Ledger v9: what the robustness defences did to each update.

``defences`` holds, per round and accepted update, a clip by the update-norm
bound (norms before and after) or what the aggregation rule left out
(discarded, or the share of coordinates trimmed), each row stated by its
own entry like every other fact.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "defences",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("rule", sa.String(24), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("norm_before", sa.Float(), nullable=True),
        sa.Column("norm_after", sa.Float(), nullable=True),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_defences_run_id", "defences", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_defences_run_id", "defences")
    op.drop_table("defences")
