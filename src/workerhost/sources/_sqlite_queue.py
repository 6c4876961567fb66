"""The embedded queue's storage: one SQLite file (WAL), blocking calls only.

Every method takes the connection and runs in one transaction; callers run
them off the event loop (:mod:`workerhost.sources.embedded` owns the thread).
Writes use ``BEGIN IMMEDIATE`` so two supervisors sharing the file never
deadlock upgrading a read lock; ``busy_timeout`` makes them wait their turn.

A task's life::

    submit ─▶ pending ──claim──▶ claimed ──complete──▶ completed
                ▲  ▲               │ │ │
                │  └──retry(delay)─┘ │ └──fail──▶ failed (not retriable) | dead (retries spent)
                │                    │                      │
                └──release / lease expired──┘   requeue ◀───┘

``attempts`` counts claims, so it is the attempt number handed to the
handler; ``release`` takes its claim back. A lease that expires (the
supervisor died) makes the task claimable again; after
``max_lease_expiries`` such expiries it is dead-lettered, so a task that
takes its supervisor down each time cannot loop forever.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..records import Task, TaskError
from .base import TaskRecord

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,   -- FIFO order within a priority
    id             TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    params         TEXT NOT NULL,                       -- JSON object
    metadata       TEXT NOT NULL DEFAULT '{}',          -- JSON object
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'claimed', 'completed', 'failed', 'dead')),
    priority       INTEGER NOT NULL DEFAULT 0,          -- higher first
    dedupe_key     TEXT UNIQUE,                         -- NULL: no deduplication
    attempts       INTEGER NOT NULL DEFAULT 0,          -- claims so far = the handler's attempt number
    failures       INTEGER NOT NULL DEFAULT 0,          -- retry budget: the task failed
    worker_losses  INTEGER NOT NULL DEFAULT 0,          -- retry budget: its worker died
    route_index    INTEGER NOT NULL DEFAULT 0,          -- position on the fallback route
    lease_expiries INTEGER NOT NULL DEFAULT 0,          -- claims lost with their supervisor
    not_before     REAL NOT NULL DEFAULT 0,             -- unix time; a delayed retry waits for it
    lease_token    TEXT,                                -- the current claim's token
    lease_owner    TEXT,                                -- host:pid of the claiming supervisor
    lease_expires  REAL,                                -- unix time
    progress       INTEGER,
    progress_message TEXT,
    result         TEXT,                                -- JSON
    error          TEXT,                                -- JSON TaskError of the last failure
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    finished_at    REAL
);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (type, status, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

STATES = ("pending", "claimed", "completed", "failed", "dead")
_CLEAR_LEASE = "lease_token = NULL, lease_owner = NULL, lease_expires = NULL"
_RECORD_COLUMNS = "id, type, status, params, result, error, attempts, progress, priority, created_at"


def connect(path: Path, *, busy_timeout: float) -> sqlite3.Connection:
    """Open (and create) the queue file; the connection is in autocommit mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    _enable_wal(conn, busy_timeout)
    # WAL + NORMAL survives a crash of any process; only a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    with _write(conn):
        _create(conn)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row["value"]) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"queue schema version {row['value']} is not {SCHEMA_VERSION}")
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch a new file to WAL, waiting out another process doing the same.

    SQLite answers "database is locked" at once, without its busy handler,
    when two connections race to change the journal mode of a fresh file
    (a producer and a supervisor started together); so retry here.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _create(conn: sqlite3.Connection) -> None:
    # executescript would COMMIT our open transaction; run the statements one by one instead.
    for statement in _strip_comments(SCHEMA).split(";"):
        if statement.strip():
            conn.execute(statement)


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--")[0] for line in sql.splitlines())


class _write:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# -- producer side -----------------------------------------------------------
def submit_many(conn: sqlite3.Connection, items: Iterable[dict[str, Any]]) -> list[str]:
    """Insert tasks ({type, params, priority?, dedupe_key?, metadata?, delay?}); a known dedupe key gives its id."""
    now = time.time()
    ids = []
    with _write(conn):
        for item in items:
            task_id = item.get("id") or uuid.uuid4().hex
            key = item.get("dedupe_key")
            cur = conn.execute(
                "INSERT INTO tasks (id, type, params, metadata, priority, dedupe_key, not_before, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
                (task_id, item["type"], json.dumps(item.get("params") or {}), json.dumps(item.get("metadata") or {}),
                 int(item.get("priority") or 0), key, now + float(item.get("delay") or 0), now, now),
            )
            if cur.rowcount == 0:
                task_id = conn.execute("SELECT id FROM tasks WHERE dedupe_key = ?", (key,)).fetchone()["id"]
            ids.append(task_id)
    return ids


def get(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    row = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return _record(row) if row is not None else None


def list_tasks(conn: sqlite3.Connection, *, status: str | None, limit: int) -> list[TaskRecord]:
    if status is None:
        rows = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM tasks ORDER BY seq LIMIT ?", (limit,))
    else:
        rows = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM tasks WHERE status = ? ORDER BY seq LIMIT ?",
                            (status, limit))
    return [_record(r) for r in rows.fetchall()]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    out = dict.fromkeys(STATES, 0)
    for row in conn.execute("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status"):
        out[row["status"]] = row["n"]
    return out


def requeue(conn: sqlite3.Connection, task_id: str | None, *, states: Sequence[str] = ("dead", "failed")) -> int:
    """Back to pending with fresh budgets: one task (dead or failed), or every dead one."""
    where = "status IN ({})".format(",".join("?" * len(states)))
    args: list[Any] = list(states)
    if task_id is not None:
        where += " AND id = ?"
        args.append(task_id)
    with _write(conn):
        cur = conn.execute(
            "UPDATE tasks SET status = 'pending', attempts = 0, failures = 0, worker_losses = 0, route_index = 0,"
            " lease_expiries = 0, not_before = 0, error = NULL, result = NULL, progress = NULL,"
            f" progress_message = NULL, finished_at = NULL, updated_at = ? WHERE {where}",
            [time.time(), *args],
        )
        return cur.rowcount


# -- supervisor side -----------------------------------------------------------
def claim(
    conn: sqlite3.Connection, task_types: Sequence[str], limit: int, *, owner: str, lease: float,
    max_lease_expiries: int,
) -> list[tuple[Task, str]]:
    """Claim up to ``limit`` due tasks (pending, or claimed with an expired lease); highest priority first."""
    now = time.time()
    marks = ",".join("?" * len(task_types))
    with _write(conn):
        # A task whose supervisors keep dying under it goes to the dead-letter instead of looping.
        conn.execute(
            f"UPDATE tasks SET status = 'dead', {_CLEAR_LEASE}, finished_at = ?, updated_at = ?, error = ?"
            f" WHERE type IN ({marks}) AND status = 'claimed' AND lease_expires < ? AND lease_expiries >= ?",
            [now, now, json.dumps(_lease_error(max_lease_expiries)), *task_types, now, max_lease_expiries],
        )
        token = uuid.uuid4().hex
        rows = conn.execute(
            "UPDATE tasks SET status = 'claimed', attempts = attempts + 1,"
            " lease_expiries = lease_expiries + (status = 'claimed'),"
            " lease_token = ?, lease_owner = ?, lease_expires = ?, updated_at = ?, progress = NULL,"
            " progress_message = NULL"
            f" WHERE seq IN (SELECT seq FROM tasks WHERE type IN ({marks}) AND ("
            "   (status = 'pending' AND not_before <= ?) OR (status = 'claimed' AND lease_expires < ?))"
            "  ORDER BY priority DESC, seq LIMIT ?)"
            " RETURNING seq, id, type, params, metadata, attempts, failures, worker_losses, route_index",
            [token, owner, now + lease, now, *task_types, now, now, limit],
        ).fetchall()
    rows.sort(key=lambda r: r["seq"])
    return [
        (Task(id=r["id"], type=r["type"], params=json.loads(r["params"]), metadata=json.loads(r["metadata"]),
              attempt=r["attempts"], failures=r["failures"], worker_losses=r["worker_losses"],
              route_index=r["route_index"]), token)
        for r in rows
    ]


def next_due(conn: sqlite3.Connection, task_types: Sequence[str]) -> float | None:
    """Unix time at which a task of these types becomes claimable without a submit: a delayed
    retry's ``not_before`` or a claim's lease expiry (None: nothing is waiting on the clock)."""
    marks = ",".join("?" * len(task_types))
    row = conn.execute(
        f"SELECT MIN(t) FROM (SELECT MIN(not_before) AS t FROM tasks WHERE type IN ({marks}) AND status = 'pending'"
        f" UNION ALL SELECT MIN(lease_expires) FROM tasks WHERE type IN ({marks}) AND status = 'claimed')",
        [*task_types, *task_types],
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def _lease_error(n: int) -> dict[str, Any]:
    return TaskError(type="LeaseExpired", message=f"claimed {n + 1} times by supervisors that never reported back",
                     retry_possible=True).to_dict()


def renew(conn: sqlite3.Connection, held: Sequence[tuple[str, str]], *, lease: float) -> list[str]:
    """Extend the leases of (id, token) pairs; return the ids now claimed under another lease.

    A task reported on (completed, retried) since the caller listed it is simply skipped.
    """
    now = time.time()
    lost = []
    with _write(conn):
        for task_id, token in held:
            cur = conn.execute(
                "UPDATE tasks SET lease_expires = ? WHERE id = ? AND lease_token = ? AND status = 'claimed'",
                (now + lease, task_id, token),
            )
            if cur.rowcount == 0:
                row = conn.execute("SELECT status, lease_token FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is not None and row["status"] == "claimed" and row["lease_token"] != token:
                    lost.append(task_id)
    return lost


def complete(conn: sqlite3.Connection, task_id: str, token: str, result: Any) -> bool:
    now = time.time()
    with _write(conn):
        cur = conn.execute(
            f"UPDATE tasks SET status = 'completed', result = ?, error = NULL, {_CLEAR_LEASE}, finished_at = ?,"
            " updated_at = ? WHERE id = ? AND lease_token = ? AND status = 'claimed'",
            (json.dumps(result), now, now, task_id, token),
        )
        return cur.rowcount == 1


def retry(conn: sqlite3.Connection, task_id: str, token: str, next_task: Task, delay: float, error: TaskError) -> bool:
    now = time.time()
    with _write(conn):
        cur = conn.execute(
            f"UPDATE tasks SET status = 'pending', not_before = ?, failures = ?, worker_losses = ?, route_index = ?,"
            f" error = ?, {_CLEAR_LEASE}, updated_at = ? WHERE id = ? AND lease_token = ? AND status = 'claimed'",
            (now + delay, next_task.failures, next_task.worker_losses, next_task.route_index,
             json.dumps(error.to_dict()), now, task_id, token),
        )
        return cur.rowcount == 1


def fail(conn: sqlite3.Connection, task_id: str, token: str, error: TaskError, *, dead: bool) -> bool:
    now = time.time()
    with _write(conn):
        cur = conn.execute(
            f"UPDATE tasks SET status = ?, error = ?, {_CLEAR_LEASE}, finished_at = ?, updated_at = ?"
            " WHERE id = ? AND lease_token = ? AND status = 'claimed'",
            ("dead" if dead else "failed", json.dumps(error.to_dict()), now, now, task_id, token),
        )
        return cur.rowcount == 1


def release(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> int:
    """Give claims back untouched: pending again, and the claim does not count as an attempt."""
    now = time.time()
    n = 0
    with _write(conn):
        for task_id, token in pairs:
            n += conn.execute(
                f"UPDATE tasks SET status = 'pending', attempts = MAX(attempts - 1, 0), {_CLEAR_LEASE},"
                " updated_at = ? WHERE id = ? AND lease_token = ? AND status = 'claimed'",
                (now, task_id, token),
            ).rowcount
    return n


def progress(conn: sqlite3.Connection, task_id: str, token: str, percent: int, message: str | None) -> bool:
    with _write(conn):
        cur = conn.execute(
            "UPDATE tasks SET progress = ?, progress_message = ?, updated_at = ?"
            " WHERE id = ? AND lease_token = ? AND status = 'claimed'",
            (percent, message, time.time(), task_id, token),
        )
        return cur.rowcount == 1


def _record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        id=row["id"], type=row["type"], status=row["status"], params=json.loads(row["params"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=json.loads(row["error"]) if row["error"] is not None else None,
        attempts=row["attempts"], progress=row["progress"], priority=row["priority"], created_at=row["created_at"],
    )
