"""TemplateService: what the API routes call for templates, builds and build contexts.

Builds run as background asyncio tasks; the service answers at once. Invariants: a template
is immutable once ready; an alias moves to a new template only when that build completes
(sandboxes keep the template they started from); a failed build leaves its template in
state "failed" with the error, and no layer debris (see builder.py).

With a shared blob store (`settings.blobs_shared`, docs/cluster.md) layers are built once:
every layer built here is published (`distribute.py`) before its template is ready, a node
that resolves a template whose layers it lacks fetches them first, and the built-ins are
built by whichever node takes their blob lock first while the others wait and fetch. On a
cluster's API server (`settings.cluster`) nothing is built or fetched: `resolve` judges a
template's layers by the blob store, and builds are sent to a node (`build_on_nodes`),
recorded on the build so the lost-node sweep can fail it if that node dies; a build's
outcome is written only while the store still has it building, so that failure stands.
Its gc also collects the layers and build contexts in the blob store that nothing uses
(`blobgc.py`); a node's gc cleans its own layer cache only.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from declawd.blobs import open_blobs
from declawd.config import Settings
from declawd.errors import Conflict, DeclawdError, InvalidInput, NotFound
from declawd.store.errors import StoreError
from declawd.templates.blobgc import Referenced, SharedSweep, sweep_shared
from declawd.templates.builder import Builder, StepFailed
from declawd.templates.buildlog import BuildLog
from declawd.templates.catalog import catalog_names, catalog_plan, catalog_spec
from declawd.templates.context import context_has, fetch_context, publish_context, store_context
from declawd.templates.distribute import LOCK_STALE_S, LayerDistributor
from declawd.templates.model import Template, template_from_record
from declawd.templates.plan import BuildPlan, plan_spec
from declawd.templates.spec import BuildRequest, parse_build_body, parse_spec

_LOG_FLUSH_S = 1.0
# A node waits this long for another node building a built-in (mmdebstrap and pip: minutes).
BUILTIN_WAIT_S = 3600.0

logger = logging.getLogger(__name__)


class BuildsOnNodes(Protocol):
    """Sends a recorded build to a node (`RemoteNode.build_template`); returns the node's id."""

    async def __call__(
        self, *, build_id: str, team_id: str, template_id: str, alias: str | None
    ) -> str: ...


def builtin_step(
    keys: Iterable[str], local: Callable[[str], bool], published: Callable[[str], bool]
) -> str:
    """What a node does with a built-in's layers, holding its blob lock: "fetch" when the
    blob store has them all, else "publish" when this host has them all, else "build"."""
    keys = list(keys)
    if all(published(k) for k in keys):
        return "fetch"
    if all(local(k) for k in keys):
        return "publish"
    return "build"


@contextlib.asynccontextmanager
async def _held(lock: contextlib.AbstractContextManager[None]) -> AsyncIterator[None]:
    """Hold a blocking (blob store) lock from async code: taken and released on worker
    threads. A caller cancelled while it is being taken releases it once it is taken."""
    taking = asyncio.ensure_future(asyncio.to_thread(lock.__enter__))
    try:
        await asyncio.shield(taking)
    except asyncio.CancelledError:

        def release(t: asyncio.Future[None]) -> None:
            if not t.cancelled() and t.exception() is None:
                threading.Thread(target=lock.__exit__, args=(None, None, None)).start()

        taking.add_done_callback(release)
        raise
    try:
        yield
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, int | float):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class TemplateService:
    def __init__(self, settings: Settings, store: Any, runtime_name: str = "runc") -> None:
        self.settings = settings
        self.store = store
        self.contexts_dir = settings.templates_path / "contexts"
        self.builder = Builder(
            settings.templates_path,
            settings.run_dir,
            runtime_name=runtime_name,
            instance=settings.instance,
            contexts_dir=self.contexts_dir,
        )
        self.blobs = open_blobs(settings) if settings.blobs_shared else None
        self.distributor: LayerDistributor | None = None
        if self.blobs is not None:
            self.distributor = LayerDistributor(self.builder.cache, self.blobs)
            self.builder.distributor = self.distributor
        self._on_nodes: BuildsOnNodes | None = None
        # Ids of the templates whose layers are all on this host (what a node's heartbeat
        # reports): the built-ins, then every template built or made local here.
        self.present: builtins.list[str] = []
        self._present_lock = threading.Lock()  # make_local runs on worker threads
        self._logs: dict[str, BuildLog] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._active_keys: dict[str, list[str]] = {}

    def build_on_nodes(self, send: BuildsOnNodes) -> None:
        """Cluster mode's API server: send each build to a node instead of running it here."""
        self._on_nodes = send

    def _note_present(self, template_id: str) -> None:
        with self._present_lock:
            if template_id not in self.present:
                self.present.append(template_id)

    # --- lookups ------------------------------------------------------------------
    def _record(self, team_id: str, id_or_alias: str) -> dict[str, Any]:
        rec: dict[str, Any] | None
        if id_or_alias.startswith("tpl-"):
            rec = self.store.get_template(id_or_alias)
            if rec is not None and rec["team_id"] not in (team_id, ""):
                rec = None
        else:
            rec = self.store.get_template_by_alias(team_id, id_or_alias)
        if rec is None:
            raise NotFound(f"template '{id_or_alias}' not found")
        return rec

    def resolve(self, team_id: str, id_or_alias: str) -> Template:
        """The ready template a sandbox should start from; NotFound / Conflict otherwise."""
        rec = self._record(team_id, id_or_alias)
        if rec["state"] != "ready":
            raise Conflict(
                f"template '{id_or_alias}' is {rec['state']}, not ready", code="template_not_ready"
            )
        tpl = template_from_record(rec, self.builder.cache.fs)
        if self.settings.cluster:
            # An API server has no layers of its own: the nodes fetch from the blob store
            # (without one, each node's disk is its own, and the node checks).
            gone = self.distributor.unpublished(tpl.layer_keys) if self.distributor else []
            if gone:
                raise _missing(id_or_alias, gone[0])
            return tpl
        return self.make_local(tpl, id_or_alias)

    def make_local(self, tpl: Template, name: str | None = None) -> Template:
        """A node's step before it uses `tpl`: fetch the layers it lacks (the template's
        whole chain, lowest first) from a shared blob store; Conflict when a layer is
        neither here nor there. Blocking: the node's routes and warm pools run it on a
        worker thread (through `resolve`)."""
        missing = [
            k for k, p in zip(tpl.layer_keys, tpl.layer_paths, strict=True) if not p.is_dir()
        ]
        if missing and self.distributor is None:
            raise _missing(name or tpl.template_id, missing[0])
        if missing:
            assert self.distributor is not None
            try:
                fetched = self.distributor.fetch_all(missing)
            except NotFound:
                gone = self.distributor.unpublished(missing)
                raise _missing(name or tpl.template_id, (gone or missing)[0]) from None
            logger.info(
                "template %s: %d layer(s) fetched from the blob store",
                tpl.template_id,
                len(fetched),
            )
        self._note_present(tpl.template_id)
        return tpl

    def _public(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {
            "template_id": rec["template_id"],
            "alias": rec.get("alias"),
            "builtin": rec["team_id"] == "",
            "state": rec["state"],
            "size_bytes": rec.get("size_bytes") or 0,
            "build_seconds": rec.get("build_seconds"),
            "created_at": _iso(rec.get("created_at")),
            "user": rec.get("user"),
            "workdir": rec.get("workdir"),
            "start_cmd": rec.get("start_cmd"),
            "ready_cmd": rec.get("ready_cmd"),
            "ready_timeout": rec.get("ready_timeout"),
            "cpu_count": rec.get("cpu_count"),
            "memory_mb": rec.get("memory_mb"),
            "runtime": rec.get("runtime"),
            "error": rec.get("error"),
        }

    def list(self, team_id: str) -> builtins.list[dict[str, Any]]:
        return [self._public(r) for r in self.store.list_templates(team_id)]

    def get(self, team_id: str, id_or_alias: str) -> dict[str, Any]:
        rec = self._record(team_id, id_or_alias)
        out = self._public(rec)
        out["envs"] = rec.get("envs") or {}
        out["layers"] = list(rec.get("layers") or [])
        return out

    # --- builds -------------------------------------------------------------------
    def _check_context(self, req: BuildRequest) -> None:
        spec = req.spec
        if spec.context_id is None:
            return
        if self.blobs is not None:  # uploaded through another API server, or for a node
            fetch_context(self.blobs, self.contexts_dir, spec.context_id)
        if not (self.contexts_dir / spec.context_id / "files").is_dir():
            raise InvalidInput("template.context_id", f"unknown build context {spec.context_id}")
        for i, op in enumerate(spec.copies):
            if not context_has(self.contexts_dir, spec.context_id, op.src):
                raise InvalidInput(
                    f"template.copies[{i}].src", f"{op.src!r} is not in the build context"
                )

    async def build(self, team_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse_build_body(body)
        plan = plan_spec(req.spec)
        await asyncio.to_thread(self._check_context, req)  # may fetch it from the blob store
        existing = None
        if req.alias is not None:
            existing = self.store.get_template_by_alias(team_id, req.alias)
            if existing is not None and existing["state"] != "ready":
                raise Conflict(
                    f"alias '{req.alias}' names template {existing['template_id']}, which is "
                    f"{existing['state']}"
                    + ("; rebuild or delete it" if existing["state"] == "failed" else "")
                )
        spec = req.spec
        template_id = _new_id("tpl")
        self.store.insert_template(
            {
                "template_id": template_id,
                "team_id": team_id,
                "alias": req.alias,
                "state": "building",
                "spec": {
                    "template": req.raw_spec,
                    "cpu_count": req.cpu_count,
                    "memory_mb": req.memory_mb,
                    "disk_mb": req.disk_mb,
                },
                "layers": [],
                "user": spec.user,
                "workdir": spec.workdir,
                "envs": spec.envs,
                "start_cmd": spec.start_cmd,
                "ready_cmd": spec.ready_cmd,
                "ready_timeout": spec.ready_timeout,
                "cpu_count": req.cpu_count,
                "memory_mb": req.memory_mb,
                "runtime": spec.runtime,
                "size_bytes": 0,
            }
        )
        if req.alias is not None and existing is None:
            # a brand-new alias is taken at once, so a second build under it gets a 409
            self.store.set_alias(team_id, req.alias, template_id)
        return await self._start(team_id, template_id, req.alias, plan)

    async def rebuild(self, team_id: str, id_or_alias: str) -> dict[str, Any]:
        rec = self._record(team_id, id_or_alias)
        if rec["state"] != "failed" or rec["team_id"] != team_id:
            raise Conflict(
                f"template {rec['template_id']} is {rec['state']}; only failed templates can be rebuilt"
            )
        req = parse_build_body({"template": (rec.get("spec") or {}).get("template"), "alias": None})
        plan = plan_spec(req.spec)
        await asyncio.to_thread(self._check_context, req)
        self.store.update_template(rec["template_id"], state="building", error=None)
        return await self._start(team_id, rec["template_id"], rec.get("alias"), plan)

    async def _start(
        self, team_id: str, template_id: str, alias: str | None, plan: BuildPlan
    ) -> dict[str, Any]:
        build_id = _new_id("bld")
        self.store.insert_build(
            {
                "build_id": build_id,
                "template_id": template_id,
                "team_id": team_id,
                "status": "building",
                "logs": [],
            }
        )
        if self._on_nodes is not None:
            try:
                node_id = await self._on_nodes(
                    build_id=build_id, team_id=team_id, template_id=template_id, alias=alias
                )
            except DeclawdError as exc:
                error = f"no node took the build: {exc.message}"
                self.store.update_template(template_id, state="failed", error=error)
                self.store.update_build(
                    build_id, status="failed", logs=[f"error: {error}"], finished_at=time.time()
                )
                raise
            # What the lost-node sweep goes by to fail the build if that node dies.
            self.store.update_build(build_id, node_id=node_id)
            return {
                "build_id": build_id,
                "status": "building",
                "template_id": template_id,
                "logs": [],
            }
        return self._begin(build_id, team_id, template_id, alias, plan)

    async def run_assigned(
        self, *, build_id: str, team_id: str, template_id: str, alias: str | None
    ) -> dict[str, Any]:
        """A node's side of `build_on_nodes`: run the build the API server recorded (its
        template's spec is in the store) here, in the background. The same build sent
        again while it runs is answered as is."""
        build = await asyncio.to_thread(self.store.get_build, build_id)
        rec = await asyncio.to_thread(self.store.get_template, template_id)
        if (
            build is None
            or rec is None
            or build["template_id"] != template_id
            or rec["team_id"] != team_id
            or build["team_id"] != team_id
        ):
            raise NotFound(f"build '{build_id}' of template '{template_id}' not found")
        answer = {
            "build_id": build_id,
            "status": "building",
            "template_id": template_id,
            "logs": [],
        }
        if build_id in self._tasks:
            return answer
        if build["status"] != "building" or rec["state"] != "building":
            raise Conflict(f"build {build_id} is {build['status']}, not building")
        req = parse_build_body({"template": (rec.get("spec") or {}).get("template"), "alias": None})
        plan = plan_spec(req.spec)
        await asyncio.to_thread(self._check_context, req)
        self._begin(build_id, team_id, template_id, alias, plan)
        return answer

    def _begin(
        self, build_id: str, team_id: str, template_id: str, alias: str | None, plan: BuildPlan
    ) -> dict[str, Any]:
        log = BuildLog()
        if self.settings.node_id:
            log.append(f"building on node {self.settings.node_name or self.settings.node_id}")
        self._logs[build_id] = log
        self._active_keys[build_id] = plan.keys
        task = asyncio.create_task(self._run(build_id, team_id, template_id, alias, plan, log))
        self._tasks[build_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(build_id, None))
        return {"build_id": build_id, "status": "building", "template_id": template_id, "logs": []}

    async def _run(
        self,
        build_id: str,
        team_id: str,
        template_id: str,
        alias: str | None,
        plan: BuildPlan,
        log: BuildLog,
    ) -> None:
        last_flush = [time.monotonic()]
        ended = [False]  # the store says the build is over: the lost-node sweep failed it

        def on_line(line: str) -> None:
            log.append(line)
            now = time.monotonic()
            if ended[0] or now - last_flush[0] < _LOG_FLUSH_S:
                return
            last_flush[0] = now
            try:
                if not self.store.save_build_logs(build_id, log.lines()):
                    ended[0] = True
                    logger.warning(
                        "build %s: no longer building in the store (its node was marked lost):"
                        " its log is not saved any more",
                        build_id,
                    )
            except (sqlite3.Error, StoreError) as exc:
                # the live log is in memory and the final write retries: the build goes on
                logger.warning("build %s: could not save its log so far: %s", build_id, exc)

        status = "failed"
        fields: dict[str, Any] = {"state": "failed", "error": "build interrupted"}
        try:
            result = await self.builder.build(plan, on_line)
            if self.distributor is not None:
                # Layers cached here from before are published too: ready means fetchable.
                await asyncio.to_thread(self.distributor.publish_all, result.keys)
            self._note_present(template_id)
            fields = {
                "state": "ready",
                "layers": result.keys,
                "size_bytes": result.size_bytes,
                "build_seconds": result.seconds,
                "error": None,
            }
            on_line(
                f"template {template_id} ready: {len(result.keys)} layers "
                f"({result.cached_steps} cached), {result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f}s"
            )
            status = "completed"
        except StepFailed as exc:
            on_line(f"error: {exc}")
            fields = {"state": "failed", "error": str(exc)}
        except asyncio.CancelledError:
            on_line("error: build interrupted (server shutting down)")
            raise
        except Exception as exc:
            on_line(f"error: build failed: {type(exc).__name__}: {exc}")
            fields = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                # Build, template and alias in one write, and only if the build is still
                # building: a build the lost-node sweep failed meanwhile stays failed.
                if not self.store.finish_build(
                    build_id, status, log.lines(), time.time(), fields, alias=alias
                ):
                    logger.warning(
                        "build %s of template %s %s here, but the store had failed it"
                        " already (its node was marked lost): that failure stands, and the"
                        " layers built stay in this node's cache",
                        build_id,
                        template_id,
                        status,
                    )
            finally:
                self._logs.pop(build_id, None)
                self._active_keys.pop(build_id, None)

    def build_status(self, team_id: str, build_id: str) -> dict[str, Any]:
        rec = self.store.get_build(build_id)
        if rec is None or rec["team_id"] != team_id:
            raise NotFound(f"build '{build_id}' not found")
        live = self._logs.get(build_id)
        return {
            "build_id": build_id,
            "status": rec["status"],
            "template_id": rec["template_id"],
            "logs": live.lines() if live is not None else list(rec.get("logs") or []),
        }

    async def wait(self, build_id: str) -> None:
        """Wait for a build started by this service (tests, CLI-in-process)."""
        task = self._tasks.get(build_id)
        if task is not None:
            await asyncio.wait([task])

    async def close(self) -> None:
        """Cancel running builds (their templates become failed, their temp dirs go)."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- deletion, contexts, built-ins, gc ---------------------------------------------
    def delete(self, team_id: str, id_or_alias: str) -> None:
        rec = self._record(team_id, id_or_alias)
        tid = rec["template_id"]
        if rec["team_id"] != team_id:
            raise Conflict(f"template {tid} is a built-in and cannot be deleted")
        if rec["state"] == "building":
            raise Conflict(f"template {tid} is still building")
        n = self.store.count_sandboxes_using(tid)
        if n > 0:
            raise Conflict(f"template {tid} is used by {n} sandbox(es)")
        # A snapshot is restored over its template's layers: keep them while one exists.
        n = self.store.count_snapshots_using(tid)
        if n > 0:
            raise Conflict(f"template {tid} is used by {n} snapshot(s); delete them first")
        self.store.delete_template(tid)

    def upload_context(self, team_id: str, body: bytes) -> dict[str, str]:
        context_id = store_context(self.contexts_dir, body)
        if self.blobs is not None:  # for the node that runs the build (blocking)
            publish_context(self.blobs, context_id, body)
        return {"context_id": context_id}

    async def ensure_builtin(
        self, names: builtins.list[str], progress: Callable[[str], None] | None = None
    ) -> builtins.list[Template]:
        """Build (or find cached) and register the named built-ins as team '' templates.

        Other catalog entries whose layers are all cached (`make catalog` built them) are
        registered too, without building: that costs a few stat calls. With a shared blob
        store each one goes through `_share_builtin` (built once in the cluster).
        """
        log = progress or (lambda _line: None)
        out = []
        cache = self.builder.cache
        extra = [
            n
            for n in catalog_names()
            if n not in names and all(cache.exists(k) for k in catalog_plan(n).keys)
        ]
        for name in [*names, *extra]:
            plan = catalog_plan(name)
            keys = plan.keys
            if self.distributor is not None:
                await self._share_builtin(name, plan, log)
            elif not all(cache.exists(k) for k in keys):
                log(f"== template {name}")
                await self.builder.build(plan, log)
            infos = [cache.info(k) for k in keys]
            template_id = (
                "tpl-" + hashlib.sha256(f"builtin:{name}:{keys[-1]}".encode()).hexdigest()[:12]
            )
            if self.store.get_template(template_id) is None:
                spec = parse_spec(catalog_spec(name), where=f"catalog {name}: ")
                self.store.insert_template(
                    {
                        "template_id": template_id,
                        "team_id": "",
                        "alias": name,
                        "state": "ready",
                        "spec": {"template": catalog_spec(name)},
                        "layers": keys,
                        "user": spec.user,
                        "workdir": spec.workdir,
                        "envs": spec.envs,
                        "start_cmd": spec.start_cmd,
                        "ready_cmd": spec.ready_cmd,
                        "ready_timeout": spec.ready_timeout,
                        "runtime": spec.runtime,
                        "size_bytes": sum(i.size_bytes for i in infos if i),
                        "build_seconds": round(sum(i.build_seconds for i in infos if i), 3),
                    }
                )
            current = self.store.get_template_by_alias("", name)
            if current is None or current["template_id"] != template_id:
                self.store.set_alias("", name, template_id)
            out.append(self.resolve("", template_id))
        return out

    async def _share_builtin(self, name: str, plan: BuildPlan, log: Callable[[str], None]) -> str:
        """Built once in the cluster: under the built-in's blob lock, fetch its layers if
        the blob store has them all, else publish them if this host has them all, else
        build (fetching what is published, publishing what it builds). Returns the step
        taken (`builtin_step`); a fetched layer's `layer.json` says `"origin": "fetched"`."""
        dist = self.distributor
        assert dist is not None
        keys = plan.keys
        lock = dist.blobs.lock(f"build-{keys[-1]}", wait_s=BUILTIN_WAIT_S, stale_s=LOCK_STALE_S)
        async with _held(lock):
            step = await asyncio.to_thread(
                builtin_step, keys, self.builder.cache.exists, dist.published
            )
            if step == "fetch":
                fetched = await asyncio.to_thread(dist.fetch_all, keys)
                if fetched:
                    log(f"== template {name}: {len(fetched)} layer(s) fetched from the blob store")
            elif step == "publish":
                done = await asyncio.to_thread(dist.publish_all, keys)
                log(f"== template {name}: {len(done)} layer(s) published to the blob store")
            else:
                log(f"== template {name}")
                await self.builder.build(plan, log)
                await asyncio.to_thread(dist.publish_all, keys)
        logger.info("built-in %s: %s", name, step)
        return step

    def _referenced_keys(self) -> set[str]:
        return self._references().layers

    def _references(self) -> Referenced:
        """The layer keys and build contexts still in use: every template of every team
        (a building one's by its plan: a build on another host publishes layers before its
        record names them), this process's running builds, the catalog's built-ins."""
        teams = [""] + [t["team_id"] for t in self.store.list_teams()]
        keep = Referenced(set(), set())
        for team in teams:
            for rec in self.store.list_templates(team):
                keep.layers.update(rec.get("layers") or [])
                raw = (rec.get("spec") or {}).get("template")
                if isinstance(raw, dict) and isinstance(raw.get("context_id"), str):
                    keep.contexts.add(raw["context_id"])
                if rec["state"] == "building":
                    keep.layers.update(self._planned_keys(rec))
        for keys in self._active_keys.values():
            keep.layers.update(keys)
        for name in catalog_names():  # built-ins are expensive: keep them even unregistered
            try:
                keep.layers.update(catalog_plan(name).keys)
            except (DeclawdError, KeyError, ValueError, OSError) as exc:
                # an entry that cannot be planned cannot be built either; its layers are
                # kept only if a registered template references them
                logger.warning(
                    "gc: built-in %r has no plan, its layers are not kept: %s", name, exc
                )
        return keep

    def _planned_keys(self, rec: dict[str, Any]) -> builtins.list[str]:
        try:
            body = {"template": (rec.get("spec") or {}).get("template"), "alias": None}
            return plan_spec(parse_build_body(body).spec).keys
        except (DeclawdError, KeyError, TypeError, ValueError) as exc:
            # its build fails on the same spec; the age floor still covers its layers
            logger.warning(
                "gc: building template %s has no plan, its layers are not kept: %s",
                rec["template_id"],
                exc,
            )
            return []

    def gc(
        self,
        min_age_s: float = 0.0,
        only: Iterable[str] | None = None,
        dry_run: bool = False,
        *,
        shared: bool | None = None,
    ) -> dict[str, Any]:
        """Remove layers that no template, running build or catalog entry references.

        `min_age_s` spares recent layers: a gc run from outside the server cannot see the
        server's builds in progress, whose layers no record references yet. `only` limits
        the candidates to those keys (a layers dir shared by several servers, as in the
        e2e tests, must not lose what another server's store references).

        With a shared blob store, the layers published there and the build contexts kept
        there are collected too (`blobgc.py`: at least `SHARED_MIN_AGE_S` old, under the
        blob store's gc lock, Busy while another host's gc holds it). `shared` None: unless
        this process is a node agent (its gc is its own cache's; the API server, which has
        the store and the blob store, collects the shared ones).
        """
        only = None if only is None else builtins.list(only)
        keep = self._referenced_keys()
        cache = self.builder.cache
        candidates = cache.layer_keys() if only is None else [k for k in only if cache.exists(k)]
        removed, freed = [], 0
        now = time.time()
        for key in candidates:
            info = cache.info(key)
            if key in keep or (info is not None and now - info.created_at < min_age_s):
                continue
            if not dry_run:
                cache.remove(key)
            removed.append(key)
            freed += info.size_bytes if info else 0
        if not dry_run:
            cache.sweep_stale()
        if shared is None:  # a node agent, or the CLI on a node's host (DECLAWD_NODE_NAME)
            shared = not (self.settings.node_id or self.settings.node_name)
        sweep = SharedSweep()
        if shared and self.distributor is not None:
            sweep = sweep_shared(
                self.distributor,
                self._references,
                min_age_s=min_age_s,
                only=only,
                dry_run=dry_run,
                contexts_dir=self.contexts_dir,
            )
        else:
            shared = False
        return {
            "removed_layers": len(removed),
            "freed_bytes": freed,
            "layers": removed,
            "dry_run": dry_run,
            "shared": shared,
            **sweep.as_dict(),
        }

    def disk_usage(self) -> dict[str, Any]:
        out = self.builder.cache.usage()
        path = self.settings.templates_path
        total, used, free = shutil.disk_usage(path if path.exists() else Path("/"))
        ctx = self.contexts_dir
        out["contexts"] = (
            len([p for p in ctx.iterdir() if p.name.startswith("ctx-")]) if ctx.is_dir() else 0
        )
        out["filesystem"] = {"total_bytes": total, "used_bytes": used, "free_bytes": free}
        return out


def _missing(name: str, key: str) -> Conflict:
    return Conflict(
        f"template '{name}' has missing layers ({key[:12]}...); rebuild it",
        code="template_not_ready",
    )
