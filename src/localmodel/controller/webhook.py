"""Admission webhooks over HTTPS (aiohttp), served by every controller replica.

Paths (KServe's where KServe has one):
  /validate-serving-kserve-io-v1alpha1-localmodelcache           C12 + capacity
  /validate-serving-kserve-io-v1alpha1-localmodelnamespacecache  C12 + capacity
  /mutate-serving-kserve-io-v1beta1-inferenceservice             I1–I3 (when --isvc-defaulting)
  /mutate-serving-kserve-io-v1alpha1-llminferenceservice         I1–I3 (when --isvc-defaulting)
  /mutate-pods                                                   mount a cached model into a pod

AdmissionReview v1 and v1beta1 are both answered in the version asked. The serving certificate is
`tls.crt`/`tls.key` in the certificate directory (cert-manager or a self-managed Secret mounted
there) and is reloaded when the files change, so rotation needs no restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lightkube import ApiError

from localmodel.controller import admission_cache, admission_consumers, admission_pod, names
from localmodel.controller.names import CacheRef
from localmodel.controller.views import Cache
from localmodel.errors import LocalModelError
from localmodel.kube import resources

if TYPE_CHECKING:
    from localmodel.controller.manager import Manager

log = logging.getLogger(__name__)

Review = Mapping[str, Any]
Decision = tuple[str | None, list[dict[str, Any]]]  # (refusal message or None, JSON patch ops)


class Webhooks:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.view = manager.view
        self.calls = 0

    # --- caches ---------------------------------------------------------------------------------

    async def validate_cluster_cache(self, request: Review) -> Decision:
        operation = request.get("operation")
        if operation == "DELETE":
            cache = Cache.from_k8s(request.get("oldObject") or {})
            return await self._in_use(cache), []
        cache = Cache.from_k8s(request.get("object") or {})
        if cache.deleting:
            return None, []
        message = admission_cache.duplicate_uri(cache, self.view.cluster_caches())
        return message or self._capacity(request, cache), []

    async def validate_namespace_cache(self, request: Review) -> Decision:
        operation = request.get("operation")
        if operation == "DELETE":
            cache = Cache.from_k8s(request.get("oldObject") or {})
            return await self._in_use(cache), []
        cache = Cache.from_k8s(request.get("object") or {})
        if cache.deleting:
            return None, []
        message = admission_cache.missing_groups(cache, self.view.all_groups())
        return message or self._capacity(request, cache), []

    def _capacity(self, request: Review, cache: Cache) -> str | None:
        old = Cache.from_k8s(request["oldObject"]) if request.get("oldObject") else None
        if not admission_cache.capacity_relevant_change(old, cache):
            return None
        return admission_cache.capacity(cache, self.view.all_groups(), self.view.all_caches())

    async def _in_use(self, cache: Cache) -> str | None:
        consumers: list[tuple[str, Mapping[str, Any]]] = []
        for kind, key, res in (("InferenceService", "inferenceServices", resources.InferenceService),
                               ("LLMInferenceService", "llmInferenceServices", resources.LLMInferenceService)):
            for ref in cache.status.get(key) or []:
                try:
                    obj = await self.manager.client.get(res, ref.get("name", ""), namespace=ref.get("namespace"))
                except ApiError as error:
                    if error.status.code == 404:
                        continue
                    raise
                consumers.append((kind, obj if isinstance(obj, dict) else obj.to_dict()))
        return admission_cache.in_use(cache, consumers)

    # --- consumers ------------------------------------------------------------------------------

    def _defaulting_enabled(self) -> bool:
        try:
            return self.view.config().enabled
        except LocalModelError as error:
            log.warning("ISVC defaulting skipped: %s", error)
            return False

    def _candidates(self, namespace: str) -> tuple[list[Cache], list[Cache]]:
        by_name = lambda c: c.ref.name  # noqa: E731 (KServe lists in name order)
        return (sorted(self.view.namespace_caches(namespace), key=by_name),
                sorted(self.view.cluster_caches(), key=by_name))

    async def default_isvc(self, request: Review) -> Decision:
        obj = request.get("object") or {}
        namespaced, cluster = self._candidates(request.get("namespace") or "")
        uri = admission_consumers.isvc_storage_uri(obj)
        return None, admission_consumers.defaulting_patch(obj, uri, self._defaulting_enabled(), namespaced, cluster)

    async def default_llmisvc(self, request: Review) -> Decision:
        obj = request.get("object") or {}
        namespaced, cluster = self._candidates(request.get("namespace") or "")
        uri = admission_consumers.llmisvc_storage_uri(obj)
        return None, admission_consumers.defaulting_patch(obj, uri, self._defaulting_enabled(), namespaced, cluster)

    async def mutate_pod(self, request: Review) -> Decision:
        pod = request.get("object") or {}
        labels = (pod.get("metadata") or {}).get("labels") or {}
        name = labels.get(names.POD_CACHE_LABEL)
        if not name:
            return None, []
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
        cache = self.view.cache(CacheRef(namespace, name)) or self.view.cache(CacheRef("", name))
        if cache is None:
            return (f"pod asks for model cache {name!r} (label {names.POD_CACHE_LABEL}) but there is no "
                    f"LocalModelNamespaceCache {namespace}/{name} and no LocalModelCache {name}"), []
        if cache.deleting:
            return f"{cache.ref.kind} {cache.ref} is being deleted", []
        try:
            ops = admission_pod.pod_patch(pod, cache)
        except admission_pod.PodMutationError as error:
            return str(error), []
        self.manager.cache_queue.add(cache.ref)  # make the serving claim in this namespace now
        return None, ops


def _response(review: Review, allowed: bool, message: str | None, ops: list[dict[str, Any]]) -> dict[str, Any]:
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": message or "denied"}
    elif ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}


def _handler(webhooks: Webhooks, name: str, decide: Callable[[Review], Awaitable[Decision]]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    metrics = webhooks.manager.metrics

    async def handle(http_request: web.Request) -> web.Response:
        review = await http_request.json()
        webhooks.calls += 1
        request = review.get("request") or {}
        operation = str(request.get("operation") or "")
        metrics.webhook_requests.labels(name, operation).inc()
        try:
            message, ops = await decide(request)
        except Exception as error:  # failurePolicy decides what the apiserver does with a 500
            log.exception("webhook %s failed", http_request.path)
            metrics.webhook_errors.labels(name).inc()
            metrics.webhook_denials.labels(name, operation).inc()
            return web.json_response(_response(review, False, f"localmodel webhook error: {error}", []))
        if message:
            metrics.webhook_denials.labels(name, operation).inc()
            log.info("denied %s %s %s/%s: %s", request.get("operation"), request.get("kind", {}).get("kind"),
                     request.get("namespace"), request.get("name"), message)
        return web.json_response(_response(review, message is None, message, ops))
    return handle


def _ssl_context(cert_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return context


async def _reload_certificates(context: ssl.SSLContext, cert_dir: Path, every: float = 30.0) -> None:
    def stamp() -> tuple[float, float]:
        return ((cert_dir / "tls.crt").stat().st_mtime, (cert_dir / "tls.key").stat().st_mtime)

    seen = stamp()
    while True:
        await asyncio.sleep(every)
        try:
            now = stamp()
            if now != seen:
                context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
                seen = now
                log.info("webhook certificate reloaded from %s", cert_dir)
        except (OSError, ssl.SSLError) as error:
            log.warning("webhook certificate reload failed: %s", error)


def application(manager: Manager) -> web.Application:
    hooks = Webhooks(manager)
    # (path, webhook name in metrics, decision)
    routes = [
        ("/validate-serving-kserve-io-v1alpha1-localmodelcache", "localmodelcache", hooks.validate_cluster_cache),
        ("/validate-localmodelcaches", "localmodelcache", hooks.validate_cluster_cache),
        ("/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache", "localmodelnamespacecache",
         hooks.validate_namespace_cache),
        ("/validate-localmodelnamespacecaches", "localmodelnamespacecache", hooks.validate_namespace_cache),
        ("/mutate-pods", "pod", hooks.mutate_pod),
    ]
    if manager.settings.isvc_defaulting:
        routes += [
            ("/mutate-serving-kserve-io-v1beta1-inferenceservice", "inferenceservice", hooks.default_isvc),
            ("/mutate-serving-kserve-io-v1alpha1-llminferenceservice", "llminferenceservice",
             hooks.default_llmisvc),
        ]
    app = web.Application()
    manager.webhooks = hooks
    app.add_routes([web.post(path, _handler(hooks, name, decide)) for path, name, decide in routes])
    return app


async def serve_webhooks(manager: Manager, cert_dir: Path) -> tuple[web.AppRunner, int]:
    context = _ssl_context(cert_dir)
    app = application(manager)
    reloader = asyncio.create_task(_reload_certificates(context, cert_dir))

    async def stop_reloader(_: web.Application) -> None:
        reloader.cancel()

    app.on_cleanup.append(stop_reloader)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, manager.settings.webhook_host, manager.settings.webhook_port, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("webhooks serving on https://%s:%d", manager.settings.webhook_host, port)
    return runner, port


def certificate_present(cert_dir: Path) -> bool:
    return (cert_dir / "tls.crt").exists() and (cert_dir / "tls.key").exists()


async def serve_webhooks_once_certified(manager: Manager, cert_dir: Path, runners: list[web.AppRunner],
                                        every: float = 2.0) -> None:
    """serve_webhooks as soon as `cert_dir` holds tls.crt and tls.key (at once when it does);
    the runner goes into `runners` for the caller's clean-up."""
    waiting_logged = False
    while not certificate_present(cert_dir):
        if not waiting_logged:
            log.warning("no tls.crt/tls.key in %s yet: webhooks start once the certificate is there", cert_dir)
            waiting_logged = True
        await asyncio.sleep(every)
    while True:
        try:
            runner, manager.webhook_port = await serve_webhooks(manager, cert_dir)
        except (OSError, ssl.SSLError) as error:  # a half-written pair: try again
            log.warning("webhook certificate in %s not usable yet: %s", cert_dir, error)
            await asyncio.sleep(every)
            continue
        runners.append(runner)
        return
