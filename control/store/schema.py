"""SQLite schema and its migrations: the tables, keys and indexes that hold the
invariants listed in `control.store`."""

from __future__ import annotations

import sqlite3


def _touch_triggers() -> str:
    """The triggers of migration 7: every insert, update and delete of a row a snapshot
    is built from records the routing entries it touches (both sides of a move)."""
    on_pool = """INSERT INTO routing_touches (server_id, kind, ref) VALUES ({r}.server_id, 'pool', {r}.smtp_id);
        INSERT INTO routing_touches (server_id, kind, ref)
            SELECT {r}.server_id, 'dkim', {r}.user_id WHERE {r}.user_id IS NOT NULL;"""
    on_header = """INSERT INTO routing_touches (server_id, kind, ref)
            SELECT server_id, 'pool', smtp_id FROM pools WHERE smtp_id = {r}.smtp_id;"""
    on_ip = """INSERT INTO routing_touches (server_id, kind, ref) VALUES ({r}.server_id, 'pool', {r}.smtp_id);"""
    on_bridge = """INSERT INTO routing_touches (server_id, kind, ref) VALUES ({r}.server_id, 'bridge', {r}.bridge_id);
        INSERT INTO routing_touches (server_id, kind, ref) VALUES ({r}.server_id, 'dkim', {r}.user_id);"""
    on_network = """INSERT INTO routing_touches (server_id, kind, ref)
            SELECT server_id, 'bridge', bridge_id FROM bridges WHERE bridge_id = {r}.bridge_id;"""
    # An account's keys are routed on every server where it has a pool or a Bridge.
    on_dkim = """INSERT INTO routing_touches (server_id, kind, ref)
            SELECT server_id, 'dkim', {r}.user_id FROM pools WHERE user_id = {r}.user_id
            UNION SELECT server_id, 'dkim', {r}.user_id FROM bridges WHERE user_id = {r}.user_id;"""
    script = []
    for table, body in (("pools", on_pool), ("pool_headers", on_header), ("ips", on_ip),
                        ("bridges", on_bridge), ("bridge_networks", on_network), ("dkim_keys", on_dkim)):
        for event, rows in (("INSERT", ("NEW",)), ("DELETE", ("OLD",)), ("UPDATE", ("OLD", "NEW"))):
            actions = "\n        ".join(body.format(r=r) for r in rows)
            script.append(f"CREATE TRIGGER routing_touch_{table}_{event.lower()} AFTER {event} ON {table} "
                          f"BEGIN\n        {actions}\n    END")
    script.append("""CREATE TRIGGER routing_touch_server AFTER UPDATE OF hostname, zone, bounce_domain
        ON mta_servers BEGIN
        INSERT INTO routing_touches (server_id, kind, ref) VALUES (NEW.server_id, 'server', 0);
    END""")
    return ";\n".join(script) + ";\n"


_TOUCH_TRIGGERS = _touch_triggers()


MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE accounts (
        user_id     INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        tier        TEXT NOT NULL CHECK (tier IN ('ESSENTIAL', 'PRO', 'BUSINESS')),
        created_at  REAL NOT NULL
    );
    CREATE TABLE api_tokens (
        token_hash  TEXT PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );
    CREATE TABLE mta_servers (
        server_id        INTEGER PRIMARY KEY,
        hostname         TEXT NOT NULL UNIQUE,
        zone             TEXT NOT NULL,
        routing_version  INTEGER NOT NULL DEFAULT 1 CHECK (routing_version > 0),
        created_at       REAL NOT NULL
    );
    CREATE TABLE pools (
        smtp_id        INTEGER PRIMARY KEY,
        user_id        INTEGER REFERENCES accounts (user_id),
        server_id      INTEGER NOT NULL REFERENCES mta_servers (server_id),
        label          TEXT NOT NULL,
        tag            TEXT NOT NULL,
        internal_name  TEXT NOT NULL UNIQUE,
        feed_type      TEXT NOT NULL DEFAULT '',
        is_default     INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
        is_shared      INTEGER NOT NULL DEFAULT 0 CHECK (is_shared IN (0, 1)),
        created_at     REAL NOT NULL,
        UNIQUE (user_id, label),
        UNIQUE (smtp_id, server_id),
        CHECK ((is_shared = 1) = (user_id IS NULL)),
        CHECK (NOT (is_shared = 1 AND is_default = 1))
    );
    CREATE UNIQUE INDEX pools_one_default_per_account ON pools (user_id) WHERE is_default = 1;
    CREATE UNIQUE INDEX pools_one_shared_per_server ON pools (server_id) WHERE is_shared = 1;
    CREATE TABLE pool_headers (
        smtp_id   INTEGER NOT NULL REFERENCES pools (smtp_id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        name      TEXT NOT NULL,
        value     TEXT NOT NULL,
        PRIMARY KEY (smtp_id, position)
    );
    CREATE UNIQUE INDEX pool_headers_unique_name ON pool_headers (smtp_id, name COLLATE NOCASE);
    CREATE TABLE ips (
        address     TEXT PRIMARY KEY,
        user_id     INTEGER REFERENCES accounts (user_id),
        server_id   INTEGER NOT NULL,
        smtp_id     INTEGER NOT NULL,
        weight      INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 1000),
        state       TEXT NOT NULL CHECK (state IN ('active', 'paused')),
        hostname    TEXT NOT NULL,
        created_at  REAL NOT NULL,
        FOREIGN KEY (smtp_id, server_id) REFERENCES pools (smtp_id, server_id)
    );
    CREATE INDEX ips_by_pool ON ips (smtp_id);
    CREATE INDEX ips_by_account ON ips (user_id);
    CREATE TABLE bridges (
        bridge_id          INTEGER PRIMARY KEY,
        user_id            INTEGER NOT NULL REFERENCES accounts (user_id),
        name               TEXT NOT NULL,
        smtp_id            INTEGER NOT NULL,
        server_id          INTEGER NOT NULL,
        username           TEXT NOT NULL UNIQUE,
        secret_hash        TEXT NOT NULL,
        feed_type          TEXT NOT NULL DEFAULT '',
        created_at         REAL NOT NULL,
        secret_rotated_at  REAL,
        revoked_at         REAL,
        UNIQUE (user_id, name),
        FOREIGN KEY (smtp_id, server_id) REFERENCES pools (smtp_id, server_id)
    );
    CREATE INDEX bridges_by_pool ON bridges (smtp_id);
    CREATE TABLE bridge_networks (
        bridge_id  INTEGER NOT NULL REFERENCES bridges (bridge_id) ON DELETE CASCADE,
        position   INTEGER NOT NULL,
        cidr       TEXT NOT NULL,
        PRIMARY KEY (bridge_id, position)
    );
    CREATE TABLE operations (
        operation_id     TEXT PRIMARY KEY,
        user_id          INTEGER NOT NULL REFERENCES accounts (user_id),
        address          TEXT NOT NULL,
        from_smtp_id     INTEGER NOT NULL,
        to_smtp_id       INTEGER NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('QUEUED', 'APPLYING', 'DONE', 'FAILED')),
        routing_version  INTEGER NOT NULL DEFAULT 0,
        server_id        INTEGER NOT NULL,
        error            TEXT NOT NULL DEFAULT '',
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    );
    CREATE UNIQUE INDEX operations_one_pending_per_ip ON operations (address)
        WHERE state IN ('QUEUED', 'APPLYING');
    CREATE INDEX operations_pending ON operations (state) WHERE state IN ('QUEUED', 'APPLYING');
    """,
    # 2: the feedback loop's outbound side: a pool's own bounce domain ('' = the MTA
    # server's hostname) and the per-bridge switch of DSNs to senders (on by default)
    """
    ALTER TABLE pools ADD COLUMN bounce_domain TEXT NOT NULL DEFAULT '';
    ALTER TABLE bridges ADD COLUMN send_dsns INTEGER NOT NULL DEFAULT 1 CHECK (send_dsns IN (0, 1));
    """,
    # 3: an MTA server's own bounce domain ('' = its hostname), the one its pools without
    # their own use
    """
    ALTER TABLE mta_servers ADD COLUMN bounce_domain TEXT NOT NULL DEFAULT '';
    """,
    # 4: the highest id each of pools and bridges has ever had, so a deleted one's id
    # is never given to a new row (see Connection._insert_new_id)
    """
    CREATE TABLE id_high_water (tbl TEXT PRIMARY KEY, high INTEGER NOT NULL);
    INSERT INTO id_high_water (tbl, high) SELECT 'pools', COALESCE(MAX(smtp_id), 0) FROM pools;
    INSERT INTO id_high_water (tbl, high) SELECT 'bridges', COALESCE(MAX(bridge_id), 0) FROM bridges;
    """,
    # 5: DKIM keys per account and domain, sealed (control.contract.dkim_seal); one ACTIVE
    # key per (account, domain), a selector once per (account, domain); a pool's signing
    # domains ('' = none)
    """
    CREATE TABLE dkim_keys (
        key_id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
        user_id             INTEGER NOT NULL REFERENCES accounts (user_id),
        domain              TEXT NOT NULL,
        selector            TEXT NOT NULL,
        algorithm           TEXT NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
        sealed_private_key  BLOB NOT NULL,
        public_key_b64      TEXT NOT NULL,
        state               TEXT NOT NULL CHECK (state IN ('ACTIVE', 'PUBLISHED', 'RETIRED')),
        created_at          REAL NOT NULL,
        retired_at          REAL,
        UNIQUE (user_id, domain, selector)
    );
    CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys (user_id, domain) WHERE state = 'ACTIVE';
    ALTER TABLE pools ADD COLUMN signing_domain TEXT NOT NULL DEFAULT '';
    ALTER TABLE pools ADD COLUMN feedback_signing_domain TEXT NOT NULL DEFAULT '';
    """,
    # 6: keyset paging of the List RPCs (control.paging): an index per listing and filter
    # that leads with the equality columns and ends with the listing's order, so a page
    # is one range scan, however deep (SQLite appends the rowid: smtp_id, bridge_id, key_id)
    """
    CREATE INDEX pools_by_account ON pools (user_id);
    CREATE INDEX pools_by_account_server ON pools (user_id, server_id);
    CREATE INDEX ips_by_account_age ON ips (user_id, created_at, address);
    CREATE INDEX ips_by_account_server_age ON ips (user_id, server_id, created_at, address);
    CREATE INDEX ips_by_pool_age ON ips (smtp_id, created_at, address);
    CREATE INDEX bridges_by_account ON bridges (user_id);
    CREATE INDEX bridges_by_account_server ON bridges (user_id, server_id);
    CREATE INDEX dkim_keys_by_account_domain ON dkim_keys (user_id, domain);
    """,
    # 7: what each routing change touched (control.routing_touches), recorded by triggers
    # in the transaction that makes the change, so the publisher reads only those entries;
    # a row lives until the publication covering it is in Redis. The server indexes make
    # a full build a range scan.
    """
    CREATE TABLE routing_touches (
        touch_id   INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the publisher's watermark
        server_id  INTEGER NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('pool', 'bridge', 'dkim', 'server')),
        ref        INTEGER NOT NULL
    );
    CREATE INDEX routing_touches_by_server ON routing_touches (server_id, touch_id);
    CREATE INDEX pools_by_server ON pools (server_id);
    CREATE INDEX ips_by_server ON ips (server_id, smtp_id);
    CREATE INDEX bridges_by_server ON bridges (server_id);
""" + _TOUCH_TRIGGERS,
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to the newest schema in one transaction; refuse a
    database newer than this poolmta."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = row[0] if row else 0
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {current} is newer than this poolmta "
                f"({len(MIGRATIONS)}); upgrade poolmta"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def schema_version(conn: sqlite3.Connection) -> int:
    """The migration the database is at (0 before the first)."""
    return conn.execute("SELECT version FROM schema_version").fetchone()[0]


def _statements(script: str) -> list[str]:
    # A trigger's body holds semicolons: a piece ends a statement only once SQLite says it is complete.
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip().rstrip(";"))
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip().rstrip(";"))
    return statements
