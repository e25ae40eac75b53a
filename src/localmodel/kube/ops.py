"""Operations endpoints of the agent and the controller: /healthz (liveness), /readyz
(readiness) and /metrics (Prometheus text from the program's registry).

Each program says what live and ready mean (the agent: its loop turned lately / its last pass
succeeded; the controller: always / informers synced); a check answers (ok, detail), served as
200 or 503 with "ok: detail" or "not ok: detail". A port of None serves nothing, 0 any free
port (`ports` says which); when both ports are equal one listener serves all three paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


class OpsServer:
    def __init__(self, registry: CollectorRegistry, *, bind_address: str, health_port: int | None,
                 metrics_port: int | None, live: Check, ready: Check) -> None:
        self.registry = registry
        self.bind_address = bind_address
        self.health_port = health_port
        self.metrics_port = metrics_port
        self._live = live
        self._ready = ready
        self._runners: list[web.AppRunner] = []
        #: Ports actually bound, by role ("health", "metrics").
        self.ports: dict[str, int] = {}

    async def _check(self, check: Check) -> web.Response:
        ok, detail = check()
        return web.Response(status=200 if ok else 503, text=f"{'ok' if ok else 'not ok'}: {detail}\n")

    async def _healthz(self, _request: web.Request) -> web.Response:
        return await self._check(self._live)

    async def _readyz(self, _request: web.Request) -> web.Response:
        return await self._check(self._ready)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve(self, routes: list[web.RouteDef], port: int) -> int:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.bind_address, port)
        await site.start()
        self._runners.append(runner)
        server = site._server  # noqa: SLF001 - aiohttp offers no public way to read the bound port
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        health = [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)]
        metrics = [web.get("/metrics", self._metrics)]
        hp, mp = self.health_port, self.metrics_port
        if hp is not None and hp == mp and hp != 0:
            port = await self._serve(health + metrics, hp)
            self.ports = {"health": port, "metrics": port}
        else:
            if hp is not None:
                self.ports["health"] = await self._serve(health, hp)
            if mp is not None:
                self.ports["metrics"] = await self._serve(metrics, mp)
        if self.ports:
            where = ", ".join(f"{role} http://{self.bind_address}:{port}" for role, port in self.ports.items())
            logger.info("serving operations endpoints: %s", where, extra={"address": self.bind_address, **self.ports})

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
