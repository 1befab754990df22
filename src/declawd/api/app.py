"""The HTTP API: app factory, authentication, error shape and start-up.

Every route but /health needs an API key (`X-API-Key` or `Authorization: Bearer`); a key
belongs to one team and every lookup is scoped to that team, so another team's sandbox is a
plain 404. Every error leaves as `{"message": ..., "code"?: ...}` with the status of
declaw-api.md §11.2.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from declawd.api.errors import body_of, headers_of, status_of
from declawd.config import Settings
from declawd.errors import DeclawdError, Unauthorized
from declawd.store import Store, open_store, store_read

if TYPE_CHECKING:
    from declawd.cluster.remote import RemoteNode
    from declawd.node.node import Node
    from declawd.templates.model import Template
    from declawd.templates.service import TemplateService

log = logging.getLogger(__name__)


@dataclass
class Team:
    team_id: str
    key_id: str


@dataclass
class Services:
    settings: Settings
    store: Store
    node: Node | RemoteNode  # RemoteNode: cluster mode (docs/cluster.md)
    templates: TemplateService
    started_at: float
    dev_key_path: str | None = None


def services(request: Request) -> Services:
    return request.app.state.services


async def current_team(request: Request) -> Team:
    key = request.headers.get("x-api-key", "")
    if not key:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    if not key:
        # The dashboard's session cookie (its CSRF token checked on state-changing calls).
        from declawd.dashboard.session import session_team

        team = await session_team(request)
        if team is not None:
            return team
        raise Unauthorized("missing API key: send X-API-Key or Authorization: Bearer")
    svc = services(request)
    found = await store_read(svc.store, svc.store.authenticate, key)
    if not found:
        raise Unauthorized("invalid or revoked API key")
    return Team(found["team_id"], found["key_id"])


def _builtin_resolver(templates: TemplateService) -> Callable[[str], Template]:
    """What a warm pool's alias names now: a built-in's name, or a template id."""
    return lambda alias: templates.resolve("", alias)


def create_app(settings: Settings, *, start_node: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from declawd.node.node import Node
        from declawd.templates.catalog import catalog_names
        from declawd.templates.service import TemplateService

        settings.state_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings)
        templates = TemplateService(settings, store, runtime_name=settings.runtime)
        node: Node | RemoteNode
        if settings.cluster:
            from declawd.cluster.remote import RemoteNode

            node = RemoteNode.for_cluster(settings, store)  # the nodes build the templates
            templates.build_on_nodes(node.build_template)
        else:
            node = Node.on_this_machine(settings, store)
        svc = Services(settings, store, node, templates, time.time())
        app.state.services = svc
        if start_node and not settings.cluster:
            # The single-process default's convenience; a cluster's operators make keys with
            # `declawd keys create` (docs/operations.md), or every API pod would make one.
            team_id, key, created = await asyncio.to_thread(
                store.ensure_dev_key, settings.keys_dir / "dev-api-key"
            )
            svc.dev_key_path = str(settings.keys_dir / "dev-api-key")
            if created:
                log.warning(
                    "created a dev API key for team 'default'; it is in %s", svc.dev_key_path
                )
        if start_node:
            await asyncio.to_thread(store.idempotency_abandon_in_progress)
            if not settings.cluster:
                await templates.ensure_builtin(["base", "python"])
            await node.start(templates=_builtin_resolver(templates), builtins=catalog_names())
        try:
            yield
        finally:
            await templates.close()
            if start_node:
                await node.close()

    app = FastAPI(
        title="declawd", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )

    @app.exception_handler(DeclawdError)
    async def _domain_error(request: Request, exc: DeclawdError) -> JSONResponse:
        return JSONResponse(body_of(exc), status_code=status_of(exc), headers=headers_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"route not found: {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"method not allowed: {request.method} {request.url.path}"
        return JSONResponse({"message": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return JSONResponse({"message": "; ".join(parts) or "invalid request"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"message": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    from declawd.api import (
        commands,
        files,
        governance,
        keys,
        misc,
        network,
        sandboxes,
        security,
        snapshots,
        templates,
        vault,
        volumes,
    )

    for module in (
        sandboxes,
        commands,
        files,
        network,
        security,
        snapshots,
        volumes,
        templates,
        vault,
        governance,
        keys,
        misc,
    ):
        app.include_router(module.router)
    from declawd.api import ports
    from declawd.dashboard import routes as dashboard

    app.include_router(ports.router)  # raw ASGI: bodies stream both ways at once
    app.include_router(dashboard.router)
    # Built from app.routes on first request: after every other router.
    from declawd.api import docs

    docs.install_docs(app)
    return app
