"""Ledger v4: admitted identities, dataset manifests and sealed-update evidence.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("signing_key_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("supernode_public_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("participant_id", sa.Integer(), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("schema_json", sa.Text(), nullable=False),
        sa.Column("licence", sa.String(256), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("participant_id", "sha256"),
    )
    with op.batch_alter_table("round_updates") as batch:
        batch.add_column(sa.Column("ciphertext_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("plaintext_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))
        batch.add_column(sa.Column("signer_key_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("seal_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("open_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("round_updates") as batch:
        for column in (
            "open_seconds",
            "seal_seconds",
            "signer_key_id",
            "signature",
            "plaintext_sha256",
            "ciphertext_sha256",
        ):
            batch.drop_column(column)
    op.drop_table("datasets")
    with op.batch_alter_table("participants") as batch:
        for column in ("admitted_at", "supernode_public_key", "signing_key_id"):
            batch.drop_column(column)
