"""The webhook certificate may arrive after the controller started: `kubectl apply -k deploy/`
starts the Pod with its optional Secret volume empty, then `hack/webhook-certs.sh` creates the
Secret and the kubelet fills the volume. The controller then starts serving the webhooks, without
a restart (found on real nodes: it used to log "webhooks not served" and never serve them)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from localmodel.controller.manager import Settings
from localmodel.dev.controlplane import ControlPlane

from .conftest import POD_NAMESPACE
from .harness import RunningController, wait_for


def test_webhooks_start_when_the_certificate_arrives_after_the_controller(cluster: ControlPlane, tmp_path: Path) -> None:
    cert_dir = tmp_path / "serving-certs"
    cert_dir.mkdir()
    settings = Settings(pod_namespace=POD_NAMESPACE, identity="late-certificate", webhook_host="127.0.0.1",
                        webhook_port=0, webhook_cert_dir=cert_dir, health_port=None, metrics_port=None,
                        lease_duration=4, renew_deadline=3, retry_period=0.5)
    running = RunningController(cluster.kubeconfig, settings)
    running._thread.start()
    try:
        assert running._started.wait(30)
        manager = running.manager
        assert manager is not None
        wait_for(lambda: manager.ready.is_set(), "controller caches synced")
        time.sleep(2.5)  # more than one look at the directory
        assert manager.webhook_port is None

        pair = cluster.server_ca.issue_serving_cert("webhook", ["127.0.0.1"], tmp_path)
        pair.key_file.rename(cert_dir / "tls.key")
        pair.cert_file.rename(cert_dir / "tls.crt")
        wait_for(lambda: manager.webhook_port, "webhooks served")

        context = ssl.create_default_context(cadata=cluster.server_ca.cert_pem.decode())
        with socket.create_connection(("127.0.0.1", manager.webhook_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                            b"Content-Type: application/json\r\nConnection: close\r\n\r\n{}")
                reply = tls.recv(4096)
        assert reply.startswith(b"HTTP/1.1 ")
    finally:
        running.stop()
