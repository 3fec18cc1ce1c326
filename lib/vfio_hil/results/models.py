"""The results store's tables (SQLAlchemy 2 ORM). The schema itself is made and changed by the
Alembic migrations in ``migrations/versions``; these classes must describe the same tables.

- ``platforms``: one row per platform, keyed by :func:`vfio_hil.lab.baseline.platform_key`.
- ``runs``: one row per run, with its whole ``results.json`` so exporters can rebuild from it.
- ``results``: one row per result record; ``(platform, check, host, device BDF, variant)``
  says what a record is about across runs (the variant: the check's parameters beyond host
  and device, such as the IOMMU backend or the hotplug way).
- ``figures``: the figures of a result.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Base of the store's tables."""


class PlatformRow(Base):
    """A platform: its canonical facts and a human label."""

    __tablename__ = "platforms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    facts: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    label: Mapped[str] = mapped_column(Text)


class RunRow(Base):
    """A run, as its results.json describes it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True))
    exit_status: Mapped[Optional[int]] = mapped_column(Integer)
    hosts: Mapped[list[str]] = mapped_column(JsonDocument)
    controller: Mapped[Optional[dict[str, Any]]] = mapped_column(JsonDocument)
    vfio_hil_version: Mapped[Optional[str]] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    imported: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    results: Mapped[list[ResultRow]] = relationship(back_populates="run")

    __table_args__ = (Index("ix_runs_started", "started", "id"),)


class ResultRow(Base):
    """One result record of a run."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    platform_id: Mapped[str] = mapped_column(ForeignKey("platforms.id"))
    host: Mapped[str] = mapped_column(String(255))
    check_id: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    level: Mapped[Optional[str]] = mapped_column(String(16))
    device_bdf: Mapped[str] = mapped_column(String(32))
    device_vendor_device: Mapped[Optional[str]] = mapped_column(String(16))
    device_serial: Mapped[Optional[str]] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(32))
    engine: Mapped[str] = mapped_column(String(32))
    hotplug_way: Mapped[str] = mapped_column(String(32))
    hot_path: Mapped[Optional[str]] = mapped_column(String(32))
    nodeid: Mapped[Optional[str]] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[Optional[float]] = mapped_column(Float)
    evidence: Mapped[Optional[str]] = mapped_column(Text)

    run: Mapped[RunRow] = relationship(back_populates="results")
    figures: Mapped[list[FigureRow]] = relationship(
        back_populates="result", cascade="all, delete-orphan", order_by="FigureRow.id"
    )

    __table_args__ = (
        Index("ix_results_run", "run_id"),
        Index("ix_results_subject", "platform_id", "check_id", "host", "device_bdf", "variant"),
        Index("ix_results_platform_run", "platform_id", "run_id"),
    )


class FigureRow(Base):
    """One figure of a result."""

    __tablename__ = "figures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))
    higher_is_better: Mapped[bool] = mapped_column()

    result: Mapped[ResultRow] = relationship(back_populates="figures")

    __table_args__ = (Index("ix_figures_result", "result_id"), Index("ix_figures_name", "name"))
