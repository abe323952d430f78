"""The statements on the path of every HL7 order, as plain SQL on the driver's cursor.

An order is stored before its ACK goes back, one message at a time on a
connection, so their cost is the interface's throughput. Through SQLAlchemy
Core each statement costs about 85 µs of Python (parameter processing, result
set-up); on the driver's own cursor, inside the same transaction, a few µs.
A new order's transaction drops from about 0.5 ms to about 0.3 ms on SQLite.
The SQL is written once with ``:name`` parameters and given to the driver in
its own style; the only value the drivers take differently is a time (SQLite
stores SQLAlchemy's text form, PostgreSQL a naive UTC timestamp). Driver
errors are the DB-API's, not SQLAlchemy's (``OrderStore`` catches both).
Everything else uses Core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection

from broker.model.domain import Order
from broker.store.tables import orders

#: Every column of ``orders`` but its id, in table order.
ORDER_COLUMNS = tuple(c.name for c in orders.columns if c.name != "id")

_MATCH = """
SELECT id FROM orders
WHERE {site_matches} AND (placer_number = :placer OR filler_number = :filler
   OR (accession_number = :accession AND {issuer_matches}))
ORDER BY CASE WHEN placer_number = :placer THEN 0
              WHEN filler_number = :filler THEN 1 ELSE 2 END, id DESC
LIMIT 1
"""
_KEEP = """
INSERT INTO order_messages (order_id, source, kind, control_id, peer, received_at, raw, error)
VALUES (:order_id, :source, :kind, :control_id, :peer, :received_at, :raw, :error)
RETURNING id
"""
_CANDIDATES = (
    "SELECT study_uid, patient_id, issuer_of_patient_id, state FROM studies "
    "WHERE {column} = :value AND {site_matches}"
)
"""An order of one site matches only that site's orders and studies (``site``: NULL for the
one implicit site)."""


class Candidate(NamedTuple):
    """A study an order may belong to."""

    study_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    state: str


class OrderSql:
    """The hot statements for one database dialect (``sqlite`` or ``postgresql``)."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        same = "IS" if self.sqlite else "IS NOT DISTINCT FROM"
        issuer, site = f"issuer {same} :issuer", f"site {same} :site"
        self.match_sql = self._style(_MATCH.format(issuer_matches=issuer, site_matches=site))
        self.keep_sql = self._style(_KEEP)
        self.by_accession_sql = self._style(
            _CANDIDATES.format(column="accession_number", site_matches=site)
        )
        self.by_study_uid_sql = self._style(
            _CANDIDATES.format(column="study_uid", site_matches=site)
        )
        names = ", ".join(ORDER_COLUMNS)
        values = ", ".join(":" + c for c in ORDER_COLUMNS)
        # Built from the table's own column names, never from input.
        insert = f"INSERT INTO orders ({names}) VALUES ({values}) RETURNING id"  # noqa: S608
        self.insert_sql = self._style(insert)

    def _style(self, sql: str) -> str:
        """SQLite's driver takes ``:name``; psycopg takes ``%(name)s``."""
        if self.sqlite:
            return sql
        return re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql.replace("%", "%%"))

    def when(self, at: datetime) -> Any:
        """A time as the store keeps it (UTC, no zone; text on SQLite)."""
        naive = at.astimezone(UTC).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive

    def _one(self, conn: Connection, sql: str, params: Mapping[str, Any]) -> Any:
        """The first column of the first row the statement returns (None: no row)."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else row[0]

    def match(self, conn: Connection, params: Mapping[str, Any]) -> int | None:
        """The id of the order with this placer number, filler number, or accession + issuer."""
        found = self._one(conn, self.match_sql, params)
        return None if found is None else int(found)

    def insert_order(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """A new ``orders`` row (a value for every column of :data:`ORDER_COLUMNS`, times
        already :meth:`when`); its id."""
        return int(self._one(conn, self.insert_sql, {c: values[c] for c in ORDER_COLUMNS}))

    def keep(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """A new ``order_messages`` row; its id."""
        return int(self._one(conn, self.keep_sql, values))

    def candidates(self, conn: Connection, order: Order) -> tuple[list[Candidate], str]:
        """The studies with the order's accession number, else with its Study Instance UID,
        and what matched (``accession``, ``study_uid``; nothing to match: no studies)."""
        if order.accession_number:
            sql, value, matched_on = self.by_accession_sql, order.accession_number, "accession"
        elif order.study_uid:
            sql, value, matched_on = self.by_study_uid_sql, order.study_uid, "study_uid"
        else:
            return [], ""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, {"value": value, "site": order.site})
            return [Candidate(*row) for row in cursor.fetchall()], matched_on
        finally:
            cursor.close()
