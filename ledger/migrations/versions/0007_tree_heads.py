"""Ledger v7: the signed tree heads' table is called what it holds, ``tree_heads``.

v5 named it ``ledger_checkpoints``; "checkpoint" also meant the per-round
model file and the pretrained base model. The rows, their append-only
triggers (renamed with the table) and every signed body are unchanged.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APPEND_ONLY = "ledger entries are append-only"


def _rename(old: str, new: str) -> None:
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "postgresql":
        for suffix in ("append_only", "no_truncate"):
            op.execute(f"ALTER TRIGGER {old}_{suffix} ON {new} RENAME TO {new}_{suffix}")
        op.execute(f"ALTER SEQUENCE {old}_id_seq RENAME TO {new}_id_seq")
        op.execute(f"ALTER INDEX {old}_pkey RENAME TO {new}_pkey")
        return
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER {old}_no_{action}")
        op.execute(
            f"CREATE TRIGGER {new}_no_{action} BEFORE {action.upper()} "
            f"ON {new} BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )


def upgrade() -> None:
    _rename("ledger_checkpoints", "tree_heads")


def downgrade() -> None:
    _rename("tree_heads", "ledger_checkpoints")
