"""Ledger v6: model releases, each a fact row stated by its own ledger entry.

A release names the run, the released model's sha256, the sha256 of its
model card (the JSON bytes) and the signed checkpoint whose tree covers the
final round's entry.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("card_sha256", sa.String(64), nullable=False),
        sa.Column("checkpoint_tree_size", sa.BigInteger(), nullable=False),
        sa.Column("checkpoint_root", sa.String(64), nullable=False),
        sa.Column("out", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("releases")
