"""`localmodel controller`: run the cache controller and its webhooks until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from localmodel.kube.config import DEFAULT_NAMESPACE


@click.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster or ~/.kube/config).")
@click.option("--namespace", "pod_namespace", envvar="POD_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of inferenceservice-config and of the leader-election Lease.")
@click.option("--identity", envvar="POD_NAME", default=None, help="Leader-election identity (default: host_pid).")
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True,
              help="Reconcile only while holding the Lease kserve-local-model-manager-leader-lock "
                   "(replicas > 1 need it); webhooks are served either way.")
@click.option("--workers", default=4, show_default=True, help="Concurrent reconciles per kind.")
@click.option("--webhook-cert-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory with tls.crt/tls.key; webhooks are served once it holds them (waited for).")
@click.option("--webhook-host", default="0.0.0.0", show_default=True, help="Address the HTTPS webhook server listens on.")
@click.option("--webhook-port", default=9443, show_default=True, help="Port of the HTTPS webhook server (0: any free port).")
@click.option("--isvc-defaulting/--no-isvc-defaulting", default=True, show_default=True,
              help="Serve KServe's InferenceService/LLMInferenceService local-model defaulting "
                   "(turn off where KServe's own webhook does it).")
@click.option("--health-port", default=8081, show_default=True, help="HTTP port of /healthz and /readyz (0: off).")
@click.option("--metrics-port", default=8080, show_default=True,
              help="HTTP port of /metrics, Prometheus text format (0: off).")
@click.option("--bind-address", default="0.0.0.0", show_default=True,
              help="Address the health and metrics servers listen on.")
@click.option("--log-level", default="INFO", show_default=True,
              help="Least severe log lines written (DEBUG also logs every API request).")
def controller(kubeconfig: str | None, pod_namespace: str, identity: str | None, leader_elect: bool,
               workers: int, webhook_cert_dir: Path | None, webhook_host: str, webhook_port: int,
               isvc_defaulting: bool, health_port: int, metrics_port: int, bind_address: str,
               log_level: str) -> None:
    """Run the LocalModelCache controller (KServe-compatible) and its admission webhooks."""
    from localmodel.controller.manager import Manager, Settings
    from localmodel.kube.client import async_client
    from localmodel.kube.logs import setup_logging

    # JSON lines, the agent's format, for a log collector; readable lines on a terminal. A line
    # per API request is noise except at DEBUG: failures surface through our own log lines.
    setup_logging("text" if sys.stderr.isatty() else "json", log_level,
                  library_requests=log_level.upper() == "DEBUG")
    # Webhooks are served once tls.crt/tls.key are in the directory, whenever they come.
    cert_dir = webhook_cert_dir
    settings = Settings(
        pod_namespace=pod_namespace, workers=workers, leader_election=leader_elect,
        webhook_host=webhook_host, webhook_port=webhook_port, webhook_cert_dir=cert_dir,
        isvc_defaulting=isvc_defaulting, bind_address=bind_address, health_port=health_port or None,
        metrics_port=metrics_port or None,
        **({"identity": identity} if identity else {}),
    )

    async def main() -> None:
        client = async_client(kubeconfig, field_manager="localmodel-controller")
        task = asyncio.create_task(Manager(client, settings).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await client.close()

    asyncio.run(main())
