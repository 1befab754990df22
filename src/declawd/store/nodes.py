"""Cluster mode's shared state: the node registry and the join tokens (docs/cluster.md).

A node row is written by the control plane when the node joins and on every heartbeat
(`last_seen`, `capacity`); its `state` is `up`, `draining` or `down`. A node's sandboxes
are the sandbox rows whose `node_id` is its id. Join tokens are kept only as a sha256 of
the token, with an expiry, and are spent by one join (`use_join_token` is a
compare-and-set, so two nodes racing with one token cannot both join).

A node marked `down` takes its work with it in the same transaction: its live sandboxes are
killed and the team template builds sent to it (`builds.node_id`) failed, their templates
too; the node, if it was only slow, cannot finish such a build late (`finish_build`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from declawd.store.db import WriteConnection
from declawd.store.model import LIVE_STATES, POOL_TEAM, SandboxState
from declawd.store.records import Repository, encode_json, placeholders, row_to_dict

NODE_STATES = ("up", "draining", "down")

# How the error of a sandbox lost with its node begins (`lost_message`).
LOST_PREFIX = "sandbox lost with node"


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    name: str
    url: str  # its internal API, https://host:port
    state: str
    joined_at: float
    last_seen: float
    # What the node reported last: free memory, sandboxes, pool sizes, templates present.
    capacity: dict[str, Any] = field(default_factory=dict)

    @property
    def templates(self) -> list[str]:
        return [str(t) for t in self.capacity.get("templates") or []]


class NodeLoss(NamedTuple):
    """What `mark_stale_nodes_down` took down with one node: the node as it was, the ids
    of its sandboxes killed and of its builds failed."""

    node: NodeRecord
    sandboxes: list[str]
    builds: list[str]


def _node(row: Any) -> NodeRecord:
    values = row_to_dict(row, ("capacity",))
    values["capacity"] = values.get("capacity") or {}
    return NodeRecord(**values)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Nodes(Repository):
    # --- registry -----------------------------------------------------------------
    def register_node(self, node_id: str, name: str, url: str) -> NodeRecord:
        """Insert or update the node's row as `up` with its name and URL (a join, or a
        node that restarts); a draining node stays draining."""
        now = self._clock()
        with self._db.write() as c:
            row = c.execute("SELECT state FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO nodes (node_id, name, url, state, joined_at, last_seen,"
                    " capacity) VALUES (?, ?, ?, 'up', ?, ?, '{}')",
                    (node_id, name, url, now, now),
                )
            else:
                state = "draining" if row["state"] == "draining" else "up"
                c.execute(
                    "UPDATE nodes SET name = ?, url = ?, state = ?, last_seen = ?"
                    " WHERE node_id = ?",
                    (name, url, state, now, node_id),
                )
        node = self.get_node(node_id)
        assert node is not None
        return node

    def get_node(self, node_id: str) -> NodeRecord | None:
        row = self._db.query_one("SELECT * FROM nodes WHERE node_id = ?", (node_id,))
        return _node(row) if row else None

    def list_nodes(self) -> list[NodeRecord]:
        return [_node(r) for r in self._db.query("SELECT * FROM nodes ORDER BY node_id")]

    def heartbeat_node(self, node_id: str, capacity: dict[str, Any]) -> NodeRecord | None:
        """Record a heartbeat: `last_seen` now, the capacity it reports. A node marked
        `down` stays down (it must reconcile and register again); None if unknown."""
        with self._db.write() as c:
            c.execute(
                "UPDATE nodes SET last_seen = ?, capacity = ? WHERE node_id = ?",
                (self._clock(), encode_json(capacity), node_id),
            )
        return self.get_node(node_id)

    def set_node_state(self, node_id: str, state: str) -> bool:
        if state not in NODE_STATES:
            raise ValueError(f"node state: one of {', '.join(NODE_STATES)}, not {state!r}")
        with self._db.write() as c:
            cur = c.execute("UPDATE nodes SET state = ? WHERE node_id = ?", (state, node_id))
            return bool(cur.rowcount > 0)

    def mark_stale_nodes_down(self, older_than: float) -> list[NodeLoss]:
        """Nodes not `down` whose last heartbeat is before `older_than` become `down`, and
        their live sandboxes `killed` with an error naming the node (still unreleased: the
        node, if it comes back, tears them down when it reconciles), their builds still
        `building` `failed` with a last log line saying so, and those builds' templates
        still `building` `failed` with that error. Returns each node marked, as it was,
        with what it lost; one transaction, so several sweeping API servers mark each
        node once."""
        live = [s.value for s in LIVE_STATES]
        marked: list[NodeLoss] = []
        now = self._clock()
        with self._db.write() as c:
            rows = c.execute(
                "SELECT * FROM nodes WHERE state != 'down' AND last_seen < ?", (older_than,)
            ).fetchall()
            for row in rows:
                node = _node(row)
                lost = [
                    str(r[0])
                    for r in c.execute(
                        "SELECT sandbox_id FROM sandboxes WHERE node_id = ?"
                        f" AND state IN ({placeholders(live)}) AND team_id != ?"
                        " ORDER BY sandbox_id",
                        (node.node_id, *live, POOL_TEAM),
                    ).fetchall()
                ]
                c.execute("UPDATE nodes SET state = 'down' WHERE node_id = ?", (node.node_id,))
                c.execute(
                    "UPDATE sandboxes SET state = ?, killed_at = ?, error = ?"
                    f" WHERE node_id = ? AND state IN ({placeholders(live)})",
                    (SandboxState.KILLED.value, now, lost_message(node.name), node.node_id, *live),
                )
                builds = _fail_builds(
                    c, node.node_id, build_lost_message(node.name, now - node.last_seen), now
                )
                marked.append(NodeLoss(node, lost, builds))
        return marked

    def fail_orphaned_builds(self, node_id: str, node_name: str) -> list[str]:
        """A node agent's step at start, before it registers: the builds the store still
        says run on it ran in the process that is gone (a restart quicker than the down
        timeout is never swept), so they fail as the sweep fails them. Returns their ids."""
        with self._db.write() as c:
            return _fail_builds(c, node_id, build_restart_message(node_name), self._clock())

    # --- join tokens --------------------------------------------------------------
    def create_join_token(self, ttl_s: float) -> str:
        """A new single-use join token valid for `ttl_s`; only its hash is stored."""
        token = "dcwj_" + secrets.token_urlsafe(32)
        now = self._clock()
        with self._db.write() as c:
            c.execute(
                "INSERT INTO join_tokens (token_hash, created_at, expires_at) VALUES (?, ?, ?)",
                (hash_token(token), now, now + ttl_s),
            )
        return token

    def use_join_token(self, token: str, node_id: str) -> bool:
        """Spend `token` for `node_id`: True once, if it is known, unexpired and unused."""
        now = self._clock()
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE join_tokens SET used_at = ?, used_by = ?"
                " WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, node_id, hash_token(token), now),
            )
            return bool(cur.rowcount == 1)


def _fail_builds(c: WriteConnection, node_id: str, error: str, now: float) -> list[str]:
    """Within a write transaction: fail the node's running builds (their log ends with
    `error: <error>`) and their templates still building. Returns their ids."""
    rows = c.execute(
        "SELECT build_id, template_id, logs FROM builds"
        " WHERE node_id = ? AND status = 'building' ORDER BY build_id",
        (node_id,),
    ).fetchall()
    for row in rows:
        build = row_to_dict(row, ("logs",))
        logs = [*(build["logs"] or []), f"error: {error}"]
        c.execute(
            "UPDATE builds SET status = 'failed', finished_at = ?, logs = ? WHERE build_id = ?",
            (now, encode_json(logs), build["build_id"]),
        )
        c.execute(
            "UPDATE templates SET state = 'failed', error = ?"
            " WHERE template_id = ? AND state = 'building'",
            (error, build["template_id"]),
        )
    return [str(r["build_id"]) for r in rows]


def build_lost_message(node_name: str, silent_s: float) -> str:
    """The error of a team template build whose node stopped heartbeating mid-build."""
    return (
        f"node {node_name} was lost during the build (no heartbeat for {silent_s:.0f} s);"
        " rebuild the template"
    )


def build_restart_message(node_name: str) -> str:
    """The error of a team template build whose node agent restarted mid-build."""
    return f"node {node_name} restarted during the build; rebuild the template"


def lost_message(node_name: str) -> str:
    """The error of a sandbox killed because its node stopped heartbeating."""
    return f"{LOST_PREFIX} {node_name}: the node stopped answering"
