"""Ledger v10: contribution values.

``valuations`` holds, per round, how its accepted updates were valued (the
method, the players, every evaluated coalition's utility and GTG-Shapley's
permutations, in canonical JSON) and ``contributions`` each participant's
value in parts per million of utility; each row is stated by its own entry.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "valuations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("utility", sa.String(16), nullable=False),
        sa.Column("players", sa.Text(), nullable=False),
        sa.Column("utilities", sa.Text(), nullable=False),
        sa.Column("permutations", sa.Text(), nullable=False),
        sa.Column("truncation", sa.BigInteger(), nullable=False),
        sa.Column("evaluations", sa.Integer(), nullable=False),
        sa.Column("gain", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_valuations_run_id", "valuations", ["run_id"])
    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("valuation_id", sa.Integer(), sa.ForeignKey("valuations.id"), nullable=False),
        sa.Column("participant_id", sa.Integer(), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_contributions_run_id", "contributions", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_contributions_run_id", "contributions")
    op.drop_table("contributions")
    op.drop_index("ix_valuations_run_id", "valuations")
    op.drop_table("valuations")
