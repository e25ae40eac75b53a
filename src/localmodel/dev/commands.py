"""The `localmodel dev` command group: tools for developing and demonstrating localmodel.

`localmodel dev cluster` runs a real control plane in the foreground until Ctrl-C or SIGTERM.
The heavy imports (cryptography, the harness) happen inside the command, so `localmodel --help`
stays fast.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from localmodel.errors import ControlPlaneError

if TYPE_CHECKING:
    from collections.abc import Callable

    from localmodel.dev.controlplane import ControlPlane
    from localmodel.dev.process import ManagedProcess


@click.group()
def dev() -> None:
    """Developer tools: a local Kubernetes control plane for tests and the demo."""


class _StopRequested(Exception):
    """Raised from the SIGINT/SIGTERM handler to unwind into the clean shutdown path."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    # Later signals are ignored so a second Ctrl-C cannot interrupt the shutdown itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _StopRequested(signal.Signals(signum).name)


@dev.command()
@click.option(
    "--dir", "workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Working directory: kubeconfig, certificates, etcd data and logs go here. "
    "Reusing a directory keeps the cluster's objects and credentials.",
)
@click.option(
    "--controller-manager/--no-controller-manager", default=True, show_default=True,
    help="Also run kube-controller-manager (default ServiceAccounts, namespace deletion, "
    "owner-reference garbage collection).",
)
@click.option(
    "--start-timeout", type=float, default=180.0, show_default=True,
    help="Seconds to wait for each component to become ready.",
)
@click.option(
    "--real-nodes", type=click.IntRange(0, 200), default=0, show_default=True,
    help="Also run this many real nodes (kubelet + containerd each, kube-scheduler, kube-proxy; "
    "needs root). The apiserver then listens on 10.244.0.1, reachable from Pods.",
)
@click.option(
    "--node-label", "node_labels", multiple=True, metavar="KEY=VALUE",
    help="A label every real node registers with (repeatable), e.g. kserve/localmodel=worker.",
)
@click.option(
    "--node-host-path", "node_host_paths", multiple=True, default=("/models",), show_default=True,
    metavar="PATH",
    help="A host path each real node has for itself (repeatable), as separate machines would: "
    "hostPath volumes there differ per node; the host sees them in DIR/nodes/<node>/host/PATH.",
)
def cluster(
    workdir: Path, controller_manager: bool, start_timeout: float, real_nodes: int, node_labels: tuple[str, ...],
    node_host_paths: tuple[str, ...],
) -> None:
    """Run a real Kubernetes control plane on 127.0.0.1 until Ctrl-C or SIGTERM.

    Starts etcd, kube-apiserver (RBAC, admission webhooks, ValidatingAdmissionPolicy,
    ServiceAccount tokens) and kube-controller-manager, all built from Go modules in
    hack/controlplane (the first build takes several minutes; later runs reuse it). Without
    --real-nodes no kubelet runs: Nodes and Pods are objects only. With --real-nodes N, N real
    nodes run Pods (see docs/realnodes.md) and "ready" is printed once every Node is Ready.

    Once `kubectl get ns` works it prints a line containing "ready", the kubeconfig path
    (DIR/kubeconfig, an admin credential) and how to call the matching kubectl. Component logs
    are in DIR/logs/. On Ctrl-C or SIGTERM everything is stopped and the command exits 0.
    """
    from localmodel.dev.build import built_paths, ensure_built
    from localmodel.dev.controlplane import DEFAULT_CONTROLLERS, ControlPlane

    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    if real_nodes:
        _cluster_with_real_nodes(workdir, start_timeout, real_nodes, node_labels, node_host_paths)
        return
    try:
        if built_paths() is None:
            click.echo("building the control plane from Go modules (first time: several minutes)...")
        paths = ensure_built()
        plane = ControlPlane(
            workdir,
            paths=paths,
            controllers=DEFAULT_CONTROLLERS if controller_manager else (),
            start_timeout=start_timeout,
        )
        with plane:
            _wait_for_kubectl(plane, start_timeout)
            click.echo(f"localmodel control plane ready: {plane.server}")
            click.echo(f"  kubeconfig: {plane.kubeconfig}")
            click.echo(f"  kubectl:    {paths.kubectl} --kubeconfig {plane.kubeconfig} get ns")
            click.echo(f"  logs:       {plane.logs_dir}/")
            _run_until_a_component_fails(plane.failed_component)
    except _StopRequested as stop:
        click.echo(f"{stop}: control plane stopped")
    except ControlPlaneError as error:
        raise click.ClickException(str(error)) from error


def _cluster_with_real_nodes(
    workdir: Path, start_timeout: float, nodes: int, node_labels: tuple[str, ...], node_host_paths: tuple[str, ...]
) -> None:
    from localmodel.dev.nodebuild import built_node_paths
    from localmodel.dev.nodes import RealNodeCluster

    labels = {}
    for label in node_labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{label!r} is not KEY=VALUE", param_hint="--node-label")
        labels[key] = value
    try:
        if built_node_paths() is None:
            click.echo("building the node binaries from Go modules (first time: several minutes)...")
        real = RealNodeCluster(
            workdir, nodes=nodes, node_labels=labels, node_host_paths=node_host_paths, start_timeout=start_timeout
        )
        real.paths  # build now, before the clock of the start
        with real:
            plane = real.control_plane
            _wait_for_kubectl(plane, start_timeout)
            click.echo(f"localmodel cluster with {nodes} real nodes ready in {real.timings['total']:.1f}s: {plane.server}")
            click.echo(f"  nodes:      {', '.join(f'{n.name} ({n.pod_cidr})' for n in real.nodes)}")
            click.echo(f"  kubeconfig: {plane.kubeconfig}")
            click.echo(f"  kubectl:    {plane.paths.kubectl} --kubeconfig {plane.kubeconfig} get nodes")
            click.echo(f"  images:     {real.paths.ctr} --address {real.nodes[0].containerd_socket} "
                       "-n k8s.io images import ARCHIVE  (for each node)")
            click.echo(f"  logs:       {plane.logs_dir}/ and {workdir}/nodes/*/logs/")
            _run_until_a_component_fails(real.failed_component)
    except _StopRequested as stop:
        click.echo(f"{stop}: cluster and nodes stopped")
    except ControlPlaneError as error:
        raise click.ClickException(str(error)) from error


def _run_until_a_component_fails(failed_component: Callable[[], ManagedProcess | None]) -> None:
    """Block (until Ctrl-C stops the command) while every process runs; the first that exits
    ends the command with its status and the tail of its log."""
    click.echo("press Ctrl-C to stop")
    while True:
        time.sleep(1.0)
        failed = failed_component()
        if failed is not None:
            raise click.ClickException(
                f"{failed.name} exited with status {failed.exit_code()}; log {failed.log_file}:\n{failed.log_tail()}")


def _wait_for_kubectl(plane: ControlPlane, timeout: float) -> None:
    """Ready means a user's first command works, not just /readyz: wait for `kubectl get ns`."""
    deadline = time.monotonic() + timeout
    while True:
        result = plane.kubectl("get", "ns", check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"`kubectl get ns` still fails after {timeout:.0f}s: {result.stderr.strip()}")
        time.sleep(0.5)


@dev.command()
@click.option(
    "--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
    default=Path(".cache/demo"), show_default=True,
    help="Working directory for the cluster, the origin bucket, the nodes' disks and the logs.",
)
@click.option("--model-mb", type=click.IntRange(min=3), default=300, show_default=True,
              help="Size of the generated sample model in MB.")
@click.option("--exit-when-ready", is_flag=True,
              help="No terminal UI: exit 0 once copies read 2/2 (with --real-nodes: and a consumer Pod has "
                   "read the whole model with the origin's checksums), non-zero with the reason otherwise.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for copies 2/2 (after the control plane is up).")
@click.option("--real-nodes", is_flag=True,
              help="Run the product as real Pods on two real nodes (kubelet + containerd; needs root): "
                   "the image built from Debian packages, `kubectl apply -k deploy/`, and a consumer Pod "
                   "that reads the model with matching checksums.")
def demo(workdir: Path, model_mb: int, exit_when_ready: bool, timeout: float, real_nodes: bool) -> None:
    """Run localmodel end to end on this machine, and show a model landing on two nodes.

    Starts a real control plane (built from Go modules), installs the CRDs and KServe's
    inferenceservice-config, creates 3 Node objects (2 in the node group "workers"), runs the
    cache controller and 3 node agents as local processes, serves a generated sample model from
    a local S3 origin, then creates a LocalModelCache and shows live progress until copies read
    2/2. Press Ctrl-C to stop everything; running it again reuses DIR.
    """
    from rich.console import Console
    from rich.live import Live

    from localmodel.dev.demo import NODES, DemoError, run_demo, wait_until_ready
    from localmodel.report.status import render_table

    console = Console(stderr=exit_when_ready)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    if real_nodes:
        _real_node_demo(console, workdir, model_mb, exit_when_ready, timeout)
        return
    try:
        with run_demo(workdir, model_mb=model_mb, say=lambda text: console.print(f"• {text}")) as running:
            if exit_when_ready:
                report = wait_until_ready(running, timeout=timeout, on_report=lambda r: None)
            else:
                with Live(console=console, refresh_per_second=4) as live:
                    report = wait_until_ready(
                        running, timeout=timeout,
                        on_report=lambda r: live.update(render_table([r]) if r else "waiting for status..."),
                    )
            console.print(render_table([report]))
            click.echo(f"ready: copies {report.available}/{report.total} of {report.name}")
            if exit_when_ready:
                return
            kubectl = f"{running.kubectl} --kubeconfig {running.kubeconfig}"
            console.print(
                "\n[bold]Try next[/] (in another terminal):\n"
                f"  KUBECONFIG={running.kubeconfig} localmodel status\n"
                f"  {kubectl} get localmodelcaches,localmodelnodes\n"
                f"  {kubectl} get nodes -L kserve/localmodel --show-labels\n"
                f"  ls -R {running.workdir / 'nodes' / NODES[0] / 'models'}\n"
                f"  cat {running.workdir / 'nodes' / NODES[0] / 'manifests'}/*.json\n"
                f"  {kubectl} delete localmodelcache sample-model   # folders go away on both nodes\n"
                "Press Ctrl-C to stop everything."
            )
            while True:
                time.sleep(1.0)
                failed = running.failed_process()
                if failed is not None:
                    raise DemoError(f"{failed.name} exited: {failed.log_tail(15)}")
    except _StopRequested as stop:
        click.echo(f"{stop}: demo stopped")
    except (DemoError, ControlPlaneError) as error:
        raise click.ClickException(str(error)) from error


def _real_node_demo(console: Any, workdir: Path, model_mb: int, exit_when_ready: bool, timeout: float) -> None:
    from rich.live import Live

    from localmodel.dev.demo import DemoError
    from localmodel.dev.realdemo import run_real_node_demo, wait_real_demo_ready
    from localmodel.errors import LocalModelError
    from localmodel.report.status import render_table

    try:
        with run_real_node_demo(workdir, model_mb=model_mb, say=lambda text: console.print(f"• {text}")) as running:
            if exit_when_ready:
                report = wait_real_demo_ready(running, timeout=timeout, on_report=lambda r: None)
            else:
                with Live(console=console, refresh_per_second=4) as live:
                    report = wait_real_demo_ready(
                        running, timeout=timeout,
                        on_report=lambda r: live.update(render_table([r]) if r else "waiting for status..."),
                    )
            console.print(render_table([report]))
            consumer = running.consumer
            click.echo(f"ready: copies {report.available}/{report.total} of {report.name}; Pod {consumer['pod']} "
                       f"on {consumer['node']} read {consumer['files']} files ({consumer['bytes']} bytes), "
                       f"every sha256 equal to the origin's")
            if exit_when_ready:
                return
            kubectl = f"KUBECONFIG={running.cluster.kubeconfig} {running.cluster.control_plane.paths.kubectl}"
            console.print(
                "\n[bold]Try next[/] (in another terminal):\n"
                f"  {kubectl} get pods -A -o wide\n"
                f"  {kubectl} get localmodelcaches,localmodelnodes,pv,pvc -A\n"
                f"  {kubectl} logs -n kserve daemonset/kserve-localmodelnode-agent\n"
                f"  ls -R {running.cluster.node('node-1').host_path('/models')}/models\n"
                f"  {kubectl} delete localmodelcache sample-model   # folders go away on both nodes\n"
                "Press Ctrl-C to stop everything."
            )
            while True:
                time.sleep(1.0)
                if not running.origin.running():
                    raise DemoError(f"the origin exited: {running.origin.log_tail(15)}")
    except _StopRequested as stop:
        click.echo(f"{stop}: demo stopped")
    except (DemoError, LocalModelError) as error:
        raise click.ClickException(str(error)) from error


@dev.command()
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the archive goes.  [default: .cache/image/ of the source checkout]")
@click.option("--reference", default="localhost/localmodel:dev", show_default=True,
              help="The name containerd gives the image on import (kustomize `images:` / Helm "
                   "`image.repository` and `image.tag` must name it, with imagePullPolicy IfNotPresent).")
@click.option("--rebuild-rootfs", is_flag=True,
              help="Build the Debian root filesystem again (to pick up Debian updates) instead of "
                   "reusing the cached one.")
@click.option("--gzip", "gzip_layers", is_flag=True,
              help="Compress the layers: a smaller archive, a slower build and import.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append the build tools' output here instead of showing it only on failure.")
def image(output_dir: Path | None, reference: str, rebuild_rootfs: bool, gzip_layers: bool,
          log: Path | None) -> None:
    """Build the product image from Debian packages, without a container engine or a base image.

    mmdebstrap makes a minimal Debian bookworm root filesystem with python3 and ca-certificates
    (cached under ~/.cache/localmodel/rootfs/ by a digest of its recipe); hack/install-venv.sh
    installs the wheel and requirements.lock into /opt/localmodel in a chroot of it; the result
    is written as an OCI image-layout archive, localmodel-VERSION.oci.tar, with the Dockerfile's
    config (entrypoint localmodel, user 1000:1000). Import it with
    `ctr -n k8s.io images import ARCHIVE`. Needs root and mmdebstrap. SOURCE_DATE_EPOCH (default:
    the commit time of HEAD) makes the build reproducible: the same commit gives the same digest.
    """
    from localmodel.dev.image import build_image
    from localmodel.errors import ImageBuildError

    started = time.monotonic()
    try:
        written = build_image(output_dir=output_dir, reference=reference, rebuild_rootfs=rebuild_rootfs,
                              gzip_layers=gzip_layers, log=log)
    except ImageBuildError as error:
        raise click.ClickException(str(error)) from error
    size_mb = written.archive.stat().st_size / 1e6
    click.echo(f"built {written.reference} in {time.monotonic() - started:.0f}s: {written.archive} "
               f"({size_mb:.0f} MB)")
    click.echo(f"manifest {written.manifest.digest}")
    click.echo(f"image id {written.image_id}")


@dev.command()
@click.argument("markdown", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a generated block is out of date.")
@click.pass_context
def docs(ctx: click.Context, markdown: Path, check: bool) -> None:
    """Rewrite the flag tables in MARKDOWN (docs/configuration.md) from the command definitions.

    Each block between `<!-- BEGIN GENERATED: localmodel CMD -->` and its END marker is
    replaced by CMD's options as click defines them.
    """
    from localmodel.dev.clidocs import blocks_in, generated, update

    # The `localmodel` group this command runs under (taken from click, not imported: cli.py
    # imports this module).
    main = ctx.find_root().command
    assert isinstance(main, click.Group)
    text = markdown.read_text()
    unknown = blocks_in(text) - set(generated(main))
    if unknown:
        raise click.ClickException(f"{markdown} has blocks for unknown commands: {', '.join(sorted(unknown))}")
    fresh = update(text, main)
    if fresh == text:
        click.echo(f"{markdown} is up to date")
        return
    if check:
        raise click.ClickException(f"{markdown} is out of date: run `localmodel dev docs {markdown}`")
    markdown.write_text(fresh)
    click.echo(f"rewrote the flag tables in {markdown}")
