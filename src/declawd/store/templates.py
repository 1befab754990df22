"""Template, alias and build records.

Built-in templates have team_id '' and are visible to every team. The alias table is
the only source of alias resolution (a template's own `alias` column records what it was
built as): a team's alias shadows a built-in of the same name.

A build's outcome is written once: `finish_build` and `save_build_logs` apply only while
the build is still `building`, so a build the lost-node sweep failed (store/nodes.py) keeps
that failure when its node, only slow, finishes it late.
"""

from __future__ import annotations

from typing import Any

from declawd.store.db import WriteConnection
from declawd.store.errors import RecordNotFound
from declawd.store.records import (
    Repository,
    encode_values,
    insert_row,
    quoted,
    row_to_dict,
    update_row,
)

BUILTIN_TEAM = ""
TEMPLATE_COLUMNS = (
    "template_id",
    "team_id",
    "alias",
    "state",
    "spec",
    "layers",
    "user",
    "workdir",
    "envs",
    "start_cmd",
    "ready_cmd",
    "ready_timeout",
    "cpu_count",
    "memory_mb",
    "runtime",
    "size_bytes",
    "build_seconds",
    "created_at",
    "error",
)
TEMPLATE_JSON = ("spec", "layers", "envs")
BUILD_COLUMNS = (
    "build_id",
    "template_id",
    "team_id",
    "status",
    "logs",
    "created_at",
    "finished_at",
    "node_id",
)
BUILD_JSON = ("logs",)


class Templates(Repository):
    def insert_template(self, rec: dict[str, Any]) -> None:
        """`template_id` and `state` required; team_id defaults to '' (built-in)."""
        fields = dict(rec)
        fields.setdefault("created_at", self._clock())
        fields.setdefault("team_id", BUILTIN_TEAM)
        for required in ("template_id", "state"):
            if not fields.get(required):
                raise ValueError(f"insert_template: {required} is required")
        insert_row(
            self._db,
            "templates",
            encode_values("templates", fields, TEMPLATE_COLUMNS, TEMPLATE_JSON),
        )

    def get_template(self, template_id: str) -> dict[str, Any] | None:
        row = self._db.query_one("SELECT * FROM templates WHERE template_id = ?", (template_id,))
        return row_to_dict(row, TEMPLATE_JSON) if row else None

    def get_template_by_alias(self, team_id: str, alias: str) -> dict[str, Any] | None:
        row = self._db.query_one(
            "SELECT t.* FROM template_aliases a JOIN templates t USING (template_id)"
            " WHERE a.alias = ? AND a.team_id IN (?, '')"
            " ORDER BY a.team_id = '' LIMIT 1",  # the team's own alias first
            (alias, team_id),
        )
        return row_to_dict(row, TEMPLATE_JSON) if row else None

    def list_templates(self, team_id: str) -> list[dict[str, Any]]:
        rows = self._db.query(
            "SELECT * FROM templates WHERE team_id IN (?, '') ORDER BY created_at, template_id",
            (team_id,),
        )
        return [row_to_dict(r, TEMPLATE_JSON) for r in rows]

    def update_template(self, template_id: str, **fields: Any) -> None:
        if "template_id" in fields:
            raise TypeError("templates: template_id cannot be changed")
        values = encode_values("templates", fields, TEMPLATE_COLUMNS, TEMPLATE_JSON)
        if not update_row(self._db, "templates", "template_id", template_id, values):
            raise RecordNotFound(f"template {template_id} not found")

    def delete_template(self, template_id: str) -> bool:
        """Delete the template and every alias pointing at it; False if it did not exist."""
        with self._db.write() as c:
            c.execute("DELETE FROM template_aliases WHERE template_id = ?", (template_id,))
            cur = c.execute("DELETE FROM templates WHERE template_id = ?", (template_id,))
            return cur.rowcount > 0

    def set_alias(self, team_id: str, alias: str, template_id: str) -> None:
        """Point the team's `alias` at `template_id` (moving it if it pointed elsewhere)."""
        with self._db.write() as c:
            if (
                c.execute(
                    "SELECT 1 FROM templates WHERE template_id = ?", (template_id,)
                ).fetchone()
                is None
            ):
                raise RecordNotFound(f"template {template_id} not found")
            c.execute(
                "INSERT INTO template_aliases (team_id, alias, template_id) VALUES (?, ?, ?)"
                " ON CONFLICT (team_id, alias) DO UPDATE SET template_id = excluded.template_id",
                (team_id, alias, template_id),
            )

    # Builds -------------------------------------------------------------------------
    def insert_build(self, rec: dict[str, Any]) -> None:
        fields = dict(rec)
        fields.setdefault("created_at", self._clock())
        fields.setdefault("logs", [])
        for required in ("build_id", "status"):
            if not fields.get(required):
                raise ValueError(f"insert_build: {required} is required")
        insert_row(self._db, "builds", encode_values("builds", fields, BUILD_COLUMNS, BUILD_JSON))

    def get_build(self, build_id: str) -> dict[str, Any] | None:
        row = self._db.query_one("SELECT * FROM builds WHERE build_id = ?", (build_id,))
        return row_to_dict(row, BUILD_JSON) if row else None

    def update_build(self, build_id: str, **fields: Any) -> None:
        if "build_id" in fields:
            raise TypeError("builds: build_id cannot be changed")
        values = encode_values("builds", fields, BUILD_COLUMNS, BUILD_JSON)
        if not update_row(self._db, "builds", "build_id", build_id, values):
            raise RecordNotFound(f"build {build_id} not found")

    def save_build_logs(self, build_id: str, logs: list[str]) -> bool:
        """The log so far of a running build; False (nothing written) once it has ended,
        so a late flush never overwrites the final log of a build failed meanwhile."""
        values = encode_values("builds", {"logs": logs}, BUILD_COLUMNS, BUILD_JSON)
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE builds SET logs = ? WHERE build_id = ? AND status = 'building'",
                (values["logs"], build_id),
            )
            return bool(cur.rowcount == 1)

    def finish_build(
        self,
        build_id: str,
        status: str,
        logs: list[str],
        finished_at: float,
        template_fields: dict[str, Any],
        alias: str | None = None,
    ) -> bool:
        """The outcome of a build (`completed` or `failed`) and of its template, in one
        transaction, if the build is still `building`; False (nothing written) when it has
        ended already (failed by the lost-node sweep) or does not exist. A completed build
        also takes the team's `alias` for its template in that transaction (so whoever sees
        it completed finds the alias moved), unless the alias already names a newer one."""
        if status == "building":
            raise ValueError("finish_build: status must be an outcome, not 'building'")
        build = encode_values(
            "builds",
            {"status": status, "logs": logs, "finished_at": finished_at},
            BUILD_COLUMNS,
            BUILD_JSON,
        )
        template = encode_values("templates", template_fields, TEMPLATE_COLUMNS, TEMPLATE_JSON)
        if "template_id" in template:
            raise TypeError("templates: template_id cannot be changed")
        with self._db.write() as c:
            rows = c.execute(
                "UPDATE builds SET status = ?, logs = ?, finished_at = ?"
                " WHERE build_id = ? AND status = 'building' RETURNING template_id, team_id",
                (build["status"], build["logs"], build["finished_at"], build_id),
            ).fetchall()
            if not rows:
                return False
            template_id, team_id = rows[0][0], rows[0][1]
            if template:
                sets = ", ".join(f"{quoted(k)} = ?" for k in template)
                c.execute(
                    f"UPDATE templates SET {sets} WHERE template_id = ?",
                    [*template.values(), template_id],
                )
            if alias is not None and status == "completed":
                _take_alias(c, team_id, alias, template_id)
            return True


def _take_alias(c: WriteConnection, team_id: str, alias: str, template_id: str) -> None:
    """Point the team's alias at `template_id` unless it names a template created after it
    (two builds under one alias: the newer one's wins, whichever finishes first)."""
    mine = c.execute(
        "SELECT created_at FROM templates WHERE template_id = ?", (template_id,)
    ).fetchone()
    if mine is None:
        return
    current = c.execute(
        "SELECT t.template_id, t.created_at FROM template_aliases a JOIN templates t"
        " USING (template_id) WHERE a.team_id = ? AND a.alias = ?",
        (team_id, alias),
    ).fetchone()
    if current is not None and current[0] != template_id and (current[1] or 0) > (mine[0] or 0):
        return
    c.execute(
        "INSERT INTO template_aliases (team_id, alias, template_id) VALUES (?, ?, ?)"
        " ON CONFLICT (team_id, alias) DO UPDATE SET template_id = excluded.template_id",
        (team_id, alias, template_id),
    )
