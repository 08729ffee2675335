"""Divergence reports in the database: written by the daily task, read by the API."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from app.store.database import Database
from app.store.orm import DivergenceRecord


def save_report(db: Database, through: date, report: dict[str, Any]) -> None:
    with db.session() as session:
        session.add(
            DivergenceRecord(
                through=through,
                status=str(report["status"]),
                differences=len(report.get("differences", [])),
                report=report,
            )
        )


def latest_report(db: Database) -> dict[str, Any] | None:
    with db.session() as session:
        row = session.scalar(select(DivergenceRecord).order_by(DivergenceRecord.id.desc()))
        if row is None:
            return None
        return {**row.report, "created_at": row.created_at.isoformat()}
