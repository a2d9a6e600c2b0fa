"""Rows for scale tests and benches, written to SQLite directly (issue 14's way of
building thousands of pools: through the API it would take far too long).

`add_pools` gives an MTA server `pools` pools of `ips_per_pool` IPs and one Bridge
each, in accounts of 10 pools, and bumps the server's routing version once, as one
routing change would.
"""

from __future__ import annotations

import sqlite3
import time

from control import models
from control.contract.secrets import hash_secret

POOLS_PER_ACCOUNT = 10


def add_pools(db_path: str, server_id: int, pools: int, *, ips_per_pool: int = 10, first_octet: int = 10) -> None:
    """Insert `pools` pools with their IPs and Bridges on `server_id` (see the module docstring)."""
    now = time.time()
    secret_hash = hash_secret("scale-secret")
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        (next_user,) = conn.execute("SELECT COALESCE(MAX(user_id), 0) + 1 FROM accounts").fetchone()
        (next_pool,) = conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(smtp_id) FROM pools), 0), "
            "COALESCE((SELECT high FROM id_high_water WHERE tbl = 'pools'), 0)) + 1").fetchone()
        (next_bridge,) = conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(bridge_id) FROM bridges), 0), "
            "COALESCE((SELECT high FROM id_high_water WHERE tbl = 'bridges'), 0)) + 1").fetchone()
        for n in range(pools):
            user_id = next_user + n // POOLS_PER_ACCOUNT
            if n % POOLS_PER_ACCOUNT == 0:
                conn.execute("INSERT INTO accounts (user_id, name, tier, created_at) VALUES (?, ?, 'PRO', ?)",
                             (user_id, f"scale-{user_id}", now))
            smtp_id = next_pool + n
            conn.execute(
                """INSERT INTO pools (smtp_id, user_id, server_id, label, tag, internal_name, feed_type,
                                      is_default, created_at) VALUES (?, ?, ?, ?, 'scale', ?, 'newsletter', ?, ?)""",
                (smtp_id, user_id, server_id, f"pool-{smtp_id}",
                 models.internal_pool_name("scale", user_id, server_id, smtp_id),
                 int(n % POOLS_PER_ACCOUNT == 0), now))
            conn.executemany(
                """INSERT INTO ips (address, user_id, server_id, smtp_id, weight, state, hostname, created_at)
                   VALUES (?, ?, ?, ?, 1, 'active', ?, ?)""",
                [(f"{first_octet + (smtp_id >> 16)}.{(smtp_id >> 8) & 255}.{smtp_id & 255}.{i + 1}", user_id,
                  server_id, smtp_id, f"out{i}-{smtp_id}.scale.example", now) for i in range(ips_per_pool)])
            bridge_id = next_bridge + n
            conn.execute(
                """INSERT INTO bridges (bridge_id, user_id, name, smtp_id, server_id, username, secret_hash,
                                        created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (bridge_id, user_id, f"bridge-{bridge_id}", smtp_id, server_id, f"br-scale{bridge_id}",
                 secret_hash, now))
        conn.execute("UPDATE mta_servers SET routing_version = routing_version + 1 WHERE server_id = ?", (server_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()
