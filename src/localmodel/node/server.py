"""Operations endpoints: /healthz (liveness), /readyz (readiness) and /metrics (Prometheus).

Liveness says the reconcile loop is still turning; readiness says the agent has finished a pass
against the current wishes (so a rollout waits until each new agent has taken over its node).
When both ports are equal one listener serves all three paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from localmodel.node.metrics import AgentMetrics
from localmodel.node.settings import ServerSettings

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


class OpsServer:
    def __init__(self, settings: ServerSettings, metrics: AgentMetrics, *, live: Check, ready: Check) -> None:
        self.settings = settings
        self.metrics = metrics
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
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve(self, routes: list[web.RouteDef], port: int) -> int:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind_address, port)
        await site.start()
        self._runners.append(runner)
        server = site._server  # noqa: SLF001 - aiohttp offers no public way to read the bound port
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        health = [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)]
        metrics = [web.get("/metrics", self._metrics)]
        hp, mp = self.settings.health_port, self.settings.metrics_port
        if hp is not None and hp == mp and hp != 0:
            port = await self._serve(health + metrics, hp)
            self.ports = {"health": port, "metrics": port}
        else:
            if hp is not None:
                self.ports["health"] = await self._serve(health, hp)
            if mp is not None:
                self.ports["metrics"] = await self._serve(metrics, mp)
        if self.ports:
            logger.info("serving operations endpoints", extra={"address": self.settings.bind_address, **self.ports})

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
