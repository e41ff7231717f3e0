"""Ledger v8: resumable runs.

``flower_runs`` records each Flower run that resumed a ledger run (a fact
stated by its own entry: the ledger run, Flower's run id and the first
ledger round it trained); the run's first Flower run stays on
``runs.flower_run_id``. And a round trained again after a crash may charge a
participant's privacy budget a second time, so ``privacy_charges`` no longer
allows only one charge per (run, round, participant); its rows are unchanged.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flower_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("flower_run_id", sa.String(20), nullable=False),
        sa.Column("first_round", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_flower_runs_run_id", "flower_runs", ["run_id"])
    op.create_index("ix_flower_runs_flower_run_id", "flower_runs", ["flower_run_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(
            "privacy_charges_run_id_round_number_participant_id_key",
            "privacy_charges",
            type_="unique",
        )
    else:  # SQLite cannot drop a constraint: the table is built again without it
        columns = ", ".join(COLUMNS)
        op.execute("ALTER TABLE privacy_charges RENAME TO privacy_charges_v7")
        op.create_table("privacy_charges", *_charge_columns())
        op.execute(
            f"INSERT INTO privacy_charges ({columns}) SELECT {columns} FROM privacy_charges_v7"
        )
        op.drop_table("privacy_charges_v7")


COLUMNS = (
    "id", "entry_seq", "run_id", "round_number", "participant_id", "dataset_sha256", "dp",
    "epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant",
    "max_grad_norm", "history_sha256", "recorded_at",
)  # fmt: skip


def _charge_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_seq", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("dp", sa.Boolean(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("accountant", sa.String(16), nullable=False),
        sa.Column("max_grad_norm", sa.Float(), nullable=False),
        sa.Column("history_sha256", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    ]


def downgrade() -> None:
    op.drop_index("ix_flower_runs_flower_run_id", "flower_runs")
    op.drop_index("ix_flower_runs_run_id", "flower_runs")
    op.drop_table("flower_runs")
