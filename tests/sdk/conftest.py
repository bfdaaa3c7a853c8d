"""Fixtures for the official-SDK tests: the mock provider, one gateway per store, a key.

Nothing is built here (tests/sdk/run.sh builds). The binaries come from
MAJORDOMO_BIN / MOCK_UPSTREAM_BIN, else $CARGO_TARGET_DIR/debug, else
<repo>/target/debug. PostgreSQL is the local server on 127.0.0.1:5432 (trust
auth, user postgres); every session gets a throwaway database, dropped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("MAJORDOMO_TEST_PG_HOST", "127.0.0.1")
PG_PORT = 5432
PG_USER = "postgres"
STARTUP_TIMEOUT_S = 30.0
ROW_TIMEOUT_S = 10.0


def _target_dir() -> Path:
    t = os.environ.get("CARGO_TARGET_DIR")
    return Path(t) if t else REPO / "target"


def _binary(env_var: str, rel: str) -> Path:
    p = Path(os.environ.get(env_var) or (_target_dir() / "debug" / rel))
    if not p.is_file():
        pytest.exit(
            f"{p} does not exist: build it first (tests/sdk/run.sh does), or set {env_var}",
            returncode=3,
        )
    return p


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None) -> None:
    """Stops one process we started (by its own pid), SIGTERM then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _clean_env() -> dict[str, str]:
    """The environment without any inherited MAJORDOMO_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}


# ---------------------------------------------------------------------------------------------
# The mock provider
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory) -> str:
    """Starts the mock provider on a free port; yields its base URL."""
    binary = _binary("MOCK_UPSTREAM_BIN", "examples/mock_upstream")
    log = tmp_path_factory.mktemp("mock") / "mock_upstream.log"
    port = free_port()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [str(binary), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=logf,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = None
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:  # exited
                break
            if line.startswith("listening on "):
                url = line.split("listening on ", 1)[1].strip()
                break
        if url is None:
            raise RuntimeError(
                f"mock_upstream did not start (exit {proc.poll()}): {_tail(log)}"
            )
        yield url
    finally:
        _stop(proc)
        if proc.stdout:
            proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------


def _pg_connect(dbname: str):
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True
    )


@dataclass
class Store:
    """Where one gateway keeps its data, and how the tests read its request log."""

    kind: str  # "sqlite" | "postgres"
    env: dict[str, str]
    sqlite_path: Path | None = None
    pg_database: str | None = None
    _pg: Any = field(default=None, repr=False)

    def fetch_rows(self, where_sql: str, params: tuple) -> list[dict]:
        """Rows of llm_requests matching a condition, as dicts (costs as strings)."""
        cols = (
            "id, provider, model, request_path, input_tokens, output_tokens, cached_tokens, "
            "cache_creation_tokens, reasoning_tokens, CAST(input_cost AS TEXT), "
            "CAST(output_cost AS TEXT), CAST(total_cost AS TEXT), price_found, usage_complete, "
            "status_code, error_message, raw_metadata"
        )
        names = [
            "id", "provider", "model", "request_path", "input_tokens", "output_tokens",
            "cached_tokens", "cache_creation_tokens", "reasoning_tokens", "input_cost",
            "output_cost", "total_cost", "price_found", "usage_complete", "status_code",
            "error_message", "raw_metadata",
        ]
        if self.kind == "sqlite":
            con = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute(f"SELECT {cols} FROM llm_requests WHERE {where_sql}", params).fetchall()
            finally:
                con.close()
        else:
            if self._pg is None:
                self._pg = _pg_connect(self.pg_database)
            sql = f"SELECT {cols} FROM llm_requests WHERE {where_sql}".replace("?", "%s")
            rows = self._pg.execute(sql, params).fetchall()
        out = []
        for r in rows:
            d = dict(zip(names, r))
            d["id"] = str(d["id"])
            d["price_found"] = None if d["price_found"] is None else bool(d["price_found"])
            d["usage_complete"] = None if d["usage_complete"] is None else bool(d["usage_complete"])
            md = d["raw_metadata"]
            d["raw_metadata"] = json.loads(md) if isinstance(md, str) else md
            out.append(d)
        return out

    def metadata_condition(self) -> str:
        if self.kind == "sqlite":
            return "json_extract(raw_metadata, '$.\"test-case\"') = ?"
        return "raw_metadata->>'test-case' = ?"

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


def _make_store(kind: str, workdir: Path) -> tuple[Store, Callable[[], None]]:
    if kind == "sqlite":
        path = workdir / "majordomo.db"
        env = {
            "MAJORDOMO_STORAGE_DRIVER": "sqlite",
            "MAJORDOMO_STORAGE_SQLITE_PATH": str(path),
        }
        return Store(kind, env, sqlite_path=path), lambda: None
    name = f"mdm_sdk_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    try:
        with _pg_connect("postgres") as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:  # never skip: the PostgreSQL tests need the server
        pytest.fail(f"PostgreSQL on {PG_HOST}:{PG_PORT} is needed for the postgres store: {e}")
    env = {
        "MAJORDOMO_STORAGE_DRIVER": "postgres",
        "MAJORDOMO_STORAGE_POSTGRES_HOST": PG_HOST,
        "MAJORDOMO_STORAGE_POSTGRES_PORT": str(PG_PORT),
        "MAJORDOMO_STORAGE_POSTGRES_USER": PG_USER,
        "MAJORDOMO_STORAGE_POSTGRES_DATABASE": name,
    }
    store = Store(kind, env, pg_database=name)

    def drop() -> None:
        store.close()
        with _pg_connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return store, drop


# ---------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    key: str
    key_id: str
    store: Store
    log: Path

    def rows_for(self, test_case: str, n: int = 1, timeout: float = ROW_TIMEOUT_S) -> list[dict]:
        """Polls until exactly `n` rows carry metadata test-case = `test_case` (rows are batched)."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while True:
            rows = self.store.fetch_rows(self.store.metadata_condition(), (test_case,))
            if len(rows) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(rows) == n, (
            f"expected {n} llm_requests row(s) with test-case {test_case}, got {len(rows)}: {rows}"
        )
        # a late duplicate would be a bug too: look once more after the batch window
        time.sleep(0.3)
        again = self.store.fetch_rows(self.store.metadata_condition(), (test_case,))
        assert len(again) == n, f"rows for {test_case} changed after the first poll: {again}"
        return rows

    def row_for(self, test_case: str) -> dict:
        return self.rows_for(test_case, 1)[0]

    def row_by_id(self, request_id: str, timeout: float = ROW_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.store.fetch_rows("id = ?", (request_id,))
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rows, f"no llm_requests row with id {request_id}"
        return rows[0]


def _wait_health(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"majordomo exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"majordomo did not answer /health in {STARTUP_TIMEOUT_S}s:\n{_tail(log)}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def gateway(request, mock_upstream: str) -> Gateway:
    """A gateway on its own store (SQLite file or throwaway PostgreSQL database) with one key."""
    binary = _binary("MAJORDOMO_BIN", "majordomo")
    kind = request.param
    workdir = Path(tempfile.mkdtemp(prefix=f"majordomo-sdk-{kind}-"))
    store, drop_store = _make_store(kind, workdir)
    port = free_port()
    env = _clean_env()
    env.update(store.env)
    env.update(
        {
            "MAJORDOMO_SERVER_HOST": "127.0.0.1",
            "MAJORDOMO_SERVER_PORT": str(port),
            "MAJORDOMO_METRICS_PORT": "0",
            "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": mock_upstream,
            "MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL": mock_upstream,
            "MAJORDOMO_PROVIDERS_GEMINI_BASE_URL": mock_upstream,
            "MAJORDOMO_PRICING_REMOTE_URL": "",
            "MAJORDOMO_SINK_SPOOL_DIR": str(workdir / "spool"),
            "MAJORDOMO_SERVER_PID_FILE": str(workdir / "majordomo.pid"),
            "MAJORDOMO_SERVER_UPGRADE_SOCK": str(workdir / "upgrade.sock"),
            # SIGTERM at teardown: no need to keep serving for a minute
            "MAJORDOMO_SERVER_GRACE_PERIOD_SECS": "0",
            "MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS": "5",
        }
    )
    log = workdir / "majordomo.log"
    proc = None
    failed_before = request.session.testsfailed
    try:
        out = subprocess.run(
            [str(binary), "keys", "create", "--name", f"sdk-tests-{kind}", "--json"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, f"keys create failed ({out.returncode}): {out.stderr}{out.stdout}"
        created = json.loads(out.stdout)
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [str(binary)], cwd=workdir, env=env,
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        url = f"http://127.0.0.1:{port}"
        _wait_health(url, proc, log)
        yield Gateway(url=url, key=created["key"], key_id=created["id"], store=store, log=log)
    finally:
        _stop(proc)
        if request.session.testsfailed > failed_before:
            sys.stderr.write(f"\n--- majordomo ({kind}) log tail, {log} ---\n{_tail(log, 60)}\n")
        try:
            drop_store()
        finally:
            store.close()
            if request.session.testsfailed == failed_before:
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def test_case() -> str:
    """A unique id sent as X-Majordomo-Test-Case; the row's raw_metadata carries it."""
    return str(uuid.uuid4())
