"""Ledger v12: C2SP checkpoints, the log's origin, and the participants' cosignatures.

- ``tree_heads`` gains ``checkpoint`` (the operator-signed C2SP note,
  verbatim), ``signed_at`` and ``label``. Heads signed before v12 keep their
  canonical JSON body and signature and stay verifiable; their new columns
  are empty. New heads are checkpoints.
- ``log_origin`` holds the log's identity: the origin line of every
  checkpoint, set once (at ``operator init``, or from the operator key at the
  first checkpoint of a ledger that predates v12).
- ``cosignatures`` holds each participant's ``cosignature/v1`` line on a
  checkpoint it checked. Append-only, like the entries and the heads.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

APPEND_ONLY = "ledger entries are append-only"
_NEW_APPEND_ONLY = ("cosignatures", "log_origin")


def upgrade() -> None:
    op.add_column("tree_heads", sa.Column("checkpoint", sa.Text(), nullable=True))
    op.add_column("tree_heads", sa.Column("signed_at", sa.String(32), nullable=True))
    op.add_column("tree_heads", sa.Column("label", sa.Text(), nullable=True))
    op.create_table(
        "log_origin",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("origin", sa.Text(), nullable=False),
    )
    op.create_table(
        "cosignatures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tree_head_id", sa.Integer(), sa.ForeignKey("tree_heads.id"), nullable=False),
        sa.Column("witness", sa.String(64), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("cosigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tree_head_id", "witness"),
    )
    for table in _NEW_APPEND_ONLY:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE "
                f"ON {table} FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
            )
        else:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} "
                    f"ON {table} BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
                )


def downgrade() -> None:
    op.drop_table("cosignatures")
    op.drop_table("log_origin")
    with op.batch_alter_table("tree_heads") as batch:
        batch.drop_column("label")
        batch.drop_column("signed_at")
        batch.drop_column("checkpoint")
