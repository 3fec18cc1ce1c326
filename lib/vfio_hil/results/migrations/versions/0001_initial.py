"""The first schema: platforms, runs, results, figures.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(JSONB(), "postgresql")
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "platforms",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("facts", JSON_DOCUMENT, nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started", STAMP, nullable=False),
        sa.Column("finished", STAMP),
        sa.Column("exit_status", sa.Integer()),
        sa.Column("hosts", JSON_DOCUMENT, nullable=False),
        sa.Column("controller", JSON_DOCUMENT),
        sa.Column("vfio_hil_version", sa.String(32)),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("document", JSON_DOCUMENT, nullable=False),
        sa.Column("imported", STAMP, nullable=False),
    )
    op.create_index("ix_runs_started", "runs", ["started", "id"])
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("platform_id", sa.String(32), sa.ForeignKey("platforms.id"), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("check_id", sa.String(32), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("level", sa.String(16)),
        sa.Column("device_bdf", sa.String(32), nullable=False),
        sa.Column("device_vendor_device", sa.String(16)),
        sa.Column("device_serial", sa.String(128)),
        sa.Column("variant", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("hotplug_way", sa.String(32), nullable=False),
        sa.Column("hot_path", sa.String(32)),
        sa.Column("nodeid", sa.Text()),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Float()),
        sa.Column("evidence", sa.Text()),
    )
    op.create_index("ix_results_run", "results", ["run_id"])
    op.create_index(
        "ix_results_subject",
        "results",
        ["platform_id", "check_id", "host", "device_bdf", "variant"],
    )
    op.create_index("ix_results_platform_run", "results", ["platform_id", "run_id"])
    op.create_table(
        "figures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "result_id",
            sa.Integer(),
            sa.ForeignKey("results.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_figures_result", "figures", ["result_id"])
    op.create_index("ix_figures_name", "figures", ["name"])


def downgrade() -> None:
    op.drop_table("figures")
    op.drop_table("results")
    op.drop_table("runs")
    op.drop_table("platforms")
