"""Ledger v13: members suspended and reinstated by the operator.

``suspensions`` holds each ``fedcommons operator suspend`` and ``reinstate``:
the participant, the action (``suspended`` or ``reinstated``) and the reason,
each row stated by its own entry (``suspension``, ``reinstatement``) like
every other fact. A member whose latest row says ``suspended`` is left out
of the runs started after it. Nothing older changes.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suspensions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("participant_id", sa.Integer(), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_suspensions_participant_id", "suspensions", ["participant_id"])


def downgrade() -> None:
    op.drop_index("ix_suspensions_participant_id", "suspensions")
    op.drop_table("suspensions")
