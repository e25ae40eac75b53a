"""The `localmodel` command line: one group, one subcommand per job.

Subcommands live beside the code they drive and are attached here, so `--help` lists them all.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import click

from localmodel import __version__
from localmodel.controller.command import controller
from localmodel.dev.commands import dev

if TYPE_CHECKING:
    from rich.console import Console

    from localmodel.node.metrics import AgentMetrics
    from localmodel.node.peer_runtime import PeerRuntime


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """localmodel: a node-local model cache for Kubernetes.

    It keeps models on each node's disk so inference pods start in seconds. It speaks KServe's
    serving.kserve.io/v1alpha1 LocalModelCache API and on-disk layout
    (<root>/models/<sha256(uri)[:16]>), so it can replace KServe's controller and node agent.
    """


@main.command()
def version() -> None:
    """Print the localmodel version."""
    click.echo(__version__)


@main.command()
@click.option(
    "--write",
    "write_dir",
    type=click.Path(file_okay=False),
    help="Write one YAML file per CRD into this directory instead of printing them.",
)
def crds(write_dir: str | None) -> None:
    """Print the CustomResourceDefinitions (serving.kserve.io/v1alpha1) as YAML.

    They are generated from localmodel's types; `kubectl apply -f -` installs them.
    """
    from pathlib import Path

    from localmodel.api.crds import render_all

    rendered = render_all()
    if write_dir is None:
        click.echo("".join(rendered.values()), nl=False)
        return
    out = Path(write_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
        click.echo(f"wrote {out / name}")

@main.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster or ~/.kube/config).")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True,
    help="A table for people, or every field as JSON or YAML for scripts.",
)
def status(kubeconfig: str | None, output: str) -> None:
    """Show every cache: URI, size, copies, and each node's phase, progress, rate, ETA, error."""
    import json

    import yaml
    from rich.console import Console

    from localmodel.report.cluster import ClusterUnavailable, read_report
    from localmodel.report.status import render_table

    try:
        rows = read_report(kubeconfig)
    except ClusterUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump([r.to_dict() for r in rows], sort_keys=False), nl=False)
    elif not rows:
        click.echo("No LocalModelCache or LocalModelNamespaceCache objects.")
    else:
        Console().print(render_table(rows))


@main.command()
@click.option("--root", type=click.Path(file_okay=False), default="/mnt/models", show_default=True,
              help="Host folder for models; each lives in <root>/models/<sha256(uri)[:16]>.")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="Standalone mode: read localModels from this YAML file instead of the cluster, "
                   "write status to <root>/status.json.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Default: in-cluster, else ~/.kube/config.")
@click.option("--node-name", envvar="NODE_NAME", help="This node (env NODE_NAME). Standalone default: hostname.")
@click.option("--namespace", envvar="POD_NAMESPACE", default="kserve", show_default=True,
              help="Namespace of inferenceservice-config (env POD_NAMESPACE).")
@click.option("--max-concurrent-downloads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Models downloaded at the same time; the others wait as ModelDownloadPending.")
@click.option("--download-threads", type=click.IntRange(min=1), default=None,
              help="Parallel ranged requests per download (engine default when unset).")
@click.option("--rate-limit", type=str, default=None,
              help="Cap per download in bytes per second, as a quantity (e.g. 200Mi).")
@click.option("--scrub-interval", type=float, default=7 * 24 * 3600, show_default=True,
              help="Seconds between full re-hashes of each model; 0 turns scrubbing off.")
@click.option("--progress-interval", type=float, default=5.0, show_default=True,
              help="Minimum seconds between status writes that only move progress.")
@click.option("--resync", type=float, default=60.0, show_default=True,
              help="Seconds between passes in standalone mode (the cluster uses "
                   "reconcilationFrequencyInSecs from inferenceservice-config).")
@click.option("--retry-initial", type=float, default=10.0, show_default=True,
              help="Seconds before the first retry of a failed download; doubles per failure.")
@click.option("--retry-max", type=float, default=600.0, show_default=True,
              help="Longest wait between retries of a failed download.")
@click.option("--reserve", type=str, default="256Mi", show_default=True,
              help="Free space a download must never use, as a quantity.")
@click.option("--bind-address", default=None, help="Default 0.0.0.0, or 127.0.0.1 in standalone mode.")
@click.option("--health-port", type=int, default=8081, show_default=True, help="-1 disables.")
@click.option("--metrics-port", type=int, default=8080, show_default=True, help="-1 disables.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None,
              help="Default: json in a cluster, text in standalone mode.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Least severe log lines written.")
@click.option("--dedup/--no-dedup", default=True, show_default=True,
              help="Keep each file's bytes once on this node: a file several models hold is a hard link to one "
                   "entry of <root>/blobs/ (read-only), and a file whose sha256 the source lists is not fetched "
                   "again while the store holds it (docs/fetch.md). --no-dedup: each new model keeps its own "
                   "copies. Where hard links fail, files stay unshared either way.")
@click.option("--adopt/--no-adopt", default=True, show_default=True,
              help="Keep a model folder found without a manifest (KServe's agent left it) when its files "
                   "match the source listing (sizes, and digests where the source gives them): hash it "
                   "and write the manifest instead of downloading. --no-adopt downloads it again.")
@click.option("--folder-layout", type=click.Choice(["storage-key", "model-name"]), default="storage-key",
              show_default=True, envvar="LOCALMODEL_FOLDER_LAYOUT",
              help="storage-key: models/<sha256(uri)[:16]> (KServe >= 0.18, localmodel's controller). "
                   "model-name: each model also appears as models/<modelName>, a link to that folder, for "
                   "KServe <= 0.17's controller; KServe's old models/<modelName> folders are moved and adopted, "
                   "not downloaded again.")
@click.option("--once", is_flag=True, help="Exit when every model is downloaded (0) or failed (1).")
@click.option("--peer-port", type=int, default=8082, show_default=True,
              help="Port serving verified models to other agents (docs/p2p.md); -1 turns peer-to-peer off.")
@click.option("--peer-advertise-address", envvar="POD_IP", default=None,
              help="Address other agents reach this one at (env POD_IP); unset: not published.")
@click.option("--peer-rate-limit", type=str, default="1Gi", show_default=True,
              help="Bytes per second served to all peers together, as a quantity; 0: no cap.")
@click.option("--peer-max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Peer connections served at once; more are answered 503 (busy).")
@click.option("--peer-token-file", type=click.Path(dir_okay=False),
              default="/var/run/secrets/localmodel/peer/token", show_default=True,
              help="Projected ServiceAccount token shown to peers; peer-to-peer is off without it.")
@click.option("--peer-service", default="kserve-localmodelnode-agent-peers", show_default=True,
              help="Headless Service over the agent Pods (in the agent's namespace): its EndpointSlices give "
                   "each node's peer address whatever CRD is installed (KServe's prunes status.peerEndpoint). "
                   "Empty: status.peerEndpoint only.")
@click.option("--peer-audience", default="localmodel-peer", show_default=True,
              help="Audience peer tokens must carry.")
@click.option("--peer-identity", multiple=True,
              help="Username accepted from peers (repeatable). Default: "
                   "system:serviceaccount:$POD_NAMESPACE:kserve-localmodelnode-agent.")
@click.option("--origin-slots", type=click.IntRange(min=0), default=1, show_default=True,
              help="Nodes that may download one model from its origin at once, cluster-wide; "
                   "the others fill from peers. 0: no bound.")
@click.option("--origin-slot-lease", type=click.IntRange(min=3), default=30, show_default=True,
              help="Seconds an origin slot outlives a holder that stopped renewing it.")
@click.option("--peer-quarantine", type=float, default=600.0, show_default=True,
              help="Seconds a peer that sent bad data is left out.")
@click.option("--peer-stall-timeout", type=float, default=30.0, show_default=True,
              help="Seconds without a new piece from peers still downloading before a fill gives up "
                   "for now (retried; the origin slot may have a new holder by then).")
@click.option("--allow-local-sources", is_flag=True,
              help="In a cluster, accept file://, plain paths and pvc:// URIs, read from the agent's own "
                   "filesystem (refused by default; always accepted in standalone mode).")
@click.option("--max-files", type=click.IntRange(min=1), default=None,
              help="Most files one model may have (default 25000; ~4 KiB of memory each while downloading).")
@click.option("--insecure-registry", "insecure_registries", multiple=True, metavar="HOST[:PORT]",
              help="An OCI registry that oci:// may reach over plain HTTP (repeatable; loopback registries "
                   "always may), like docker's insecure-registries.")
@click.option("--temp-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for every temporary file: private credential files, the API client's copy of "
                   "the kubeconfig's CA (default: the system's temp folder, $TMPDIR or /tmp).")
def agent(root: str, manifest: str | None, kubeconfig: str | None, node_name: str | None, namespace: str,
          max_concurrent_downloads: int, download_threads: int | None, rate_limit: str | None,
          scrub_interval: float, progress_interval: float, resync: float, retry_initial: float,
          retry_max: float, reserve: str,
          bind_address: str | None, health_port: int, metrics_port: int, log_format: str | None,
          log_level: str, dedup: bool, adopt: bool, folder_layout: str, once: bool, peer_port: int, peer_advertise_address: str | None,
          peer_rate_limit: str, peer_max_connections: int, peer_token_file: str, peer_service: str,
          peer_audience: str,
          peer_identity: tuple[str, ...], origin_slots: int, origin_slot_lease: int,
          peer_quarantine: float, peer_stall_timeout: float, allow_local_sources: bool, max_files: int | None,
          insecure_registries: tuple[str, ...], temp_dir: str | None) -> None:
    """Keep this node's models on disk equal to its LocalModelNode (the node agent DaemonSet).

    In a cluster it watches only the LocalModelNode named $NODE_NAME, downloads in-process with
    verification and resume, and reports progress in the object's status and in Events. With
    --manifest it runs the same reconcile from a YAML file, without Kubernetes.
    """
    import asyncio
    import os
    import signal
    import socket
    from pathlib import Path

    from localmodel.api.quantity import parse_quantity
    from localmodel.fetch.options import FetchOptions
    from localmodel.kube.logs import setup_logging
    from localmodel.node.aliases import FolderLayout
    from localmodel.node.runner import run_agent
    from localmodel.node.settings import (
        AgentSettings,
        DownloadSettings,
        PeerSettings,
        RetrySettings,
        ScrubSettings,
        ServerSettings,
        StatusSettings,
    )

    standalone = manifest is not None
    setup_logging(log_format or ("text" if standalone else "json"), log_level)
    if temp_dir:
        import tempfile

        # Libraries make temporary files too (lightkube writes the kubeconfig's CA to one):
        # with a read-only root filesystem this folder must be the only place they go.
        tempfile.tempdir = str(Path(temp_dir).absolute())
    if not node_name:
        if not standalone:
            raise click.UsageError("NODE_NAME is not set (pass --node-name or use --manifest)")
        node_name = socket.gethostname()
    try:
        limit = parse_quantity(rate_limit) if rate_limit else None
        reserve_bytes = parse_quantity(reserve)
        peer_limit = parse_quantity(peer_rate_limit) if peer_rate_limit else 0
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    default = FetchOptions()
    engine = FetchOptions(adopt=adopt, dedup=dedup, concurrency=download_threads or default.concurrency,
                          rate_limit=float(limit) if limit else None, max_files=max_files or default.max_files)
    settings = AgentSettings(
        root=Path(root).absolute(),
        node_name=node_name,
        namespace=namespace,
        folder_layout=FolderLayout(folder_layout),
        retry=RetrySettings(initial_seconds=retry_initial, max_seconds=max(retry_max, retry_initial)),
        downloads=DownloadSettings(max_concurrent=max_concurrent_downloads, reserve_bytes=reserve_bytes,
                                   engine_options=engine, allow_local_sources=allow_local_sources or standalone,
                                   insecure_registries=tuple(insecure_registries),
                                   temp_dir=Path(temp_dir).absolute() if temp_dir else None),
        status=StatusSettings(progress_interval_seconds=progress_interval,
                              progress_log_seconds=5.0 if standalone else 30.0),
        scrub=ScrubSettings(interval_seconds=scrub_interval or None),
        server=ServerSettings(
            bind_address=bind_address or ("127.0.0.1" if standalone else "0.0.0.0"),
            health_port=None if health_port < 0 else health_port,
            metrics_port=None if metrics_port < 0 else metrics_port,
        ),
        peers=PeerSettings(
            port=None if peer_port < 0 or standalone else peer_port,
            advertise_address=peer_advertise_address or None,
            service=peer_service or None,
            rate_limit=float(peer_limit) if peer_limit else None,
            max_connections=peer_max_connections,
            token_file=Path(peer_token_file),
            audience=peer_audience,
            allowed_users=tuple(peer_identity),
            origin_slots=origin_slots,
            lease_seconds=origin_slot_lease,
            quarantine_seconds=peer_quarantine,
            stall_seconds=peer_stall_timeout,
        ),
        resync_seconds=resync,
    )

    async def main_async() -> int:
        if standalone:
            from localmodel.node.standalone import StandaloneBackend, settings_from_environment

            backend = StandaloneBackend(Path(manifest).absolute(), settings.root, node_name=settings.node_name,
                                        settings=settings_from_environment(os.environ), resync_seconds=resync)
            peer_factory = None
        else:
            from localmodel.kube.client import async_client, sync_client
            from localmodel.node.cluster import ClusterBackend
            from localmodel.node.peer_runtime import build_peer_runtime

            backend = ClusterBackend(async_client(kubeconfig, field_manager="localmodel-agent"),
                                     node_name=settings.node_name, namespace=settings.namespace)

            def peer_factory(metrics: AgentMetrics) -> PeerRuntime | None:
                return build_peer_runtime(settings, sync_client(kubeconfig, field_manager="localmodel-agent"),
                                          metrics)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await run_agent(settings, backend, stop=stop, once=once, peer_factory=peer_factory)

    raise SystemExit(asyncio.run(main_async()))


# -- localmodel fetch ---------------------------------------------------------------------

#: Exit code when the failure is transient and a retry may succeed (sysexits EX_TEMPFAIL).
EXIT_TRANSIENT = 75


def _log_to(console: Console, *, as_json: bool) -> None:
    """Warnings and above from localmodel go to stderr: JSON lines, or rich text beside a bar."""
    import logging

    from rich.logging import RichHandler

    from localmodel.kube.logs import JSONFormatter

    handler: logging.Handler
    if as_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter(fields={"event": "log"}))
    else:
        handler = RichHandler(console=console, show_path=False)
    logger = logging.getLogger("localmodel")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _parse_size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from localmodel.api.quantity import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _add_docker_config(settings: dict[str, str]) -> None:
    """oci:// credentials the way docker keeps them: DOCKER_CONFIG or ~/.docker/config.json,
    handed to the source as a setting (sources read no files)."""
    from localmodel.sources.oci import AUTH_SETTING, docker_config_path

    path = docker_config_path(settings)
    if AUTH_SETTING in settings or path is None:
        return
    try:
        settings[AUTH_SETTING] = Path(path).read_text(encoding="utf-8")
    except OSError:
        pass  # no docker config: anonymous pulls


@main.command(context_settings={"show_default": True})
@click.argument("pairs", nargs=-1, required=True, metavar="SRC DEST [SRC DEST]...")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8,
              envvar="LOCALMODEL_FETCH_CONCURRENCY", help="Parallel ranged requests.")
@click.option("--chunk-size", default="16Mi", callback=_parse_size_option, envvar="LOCALMODEL_FETCH_CHUNK_SIZE",
              help="Bytes per ranged request (e.g. 16Mi).")
@click.option("--limit-rate", default=None, callback=_parse_size_option, envvar="LOCALMODEL_FETCH_LIMIT_RATE",
              help="Cap on bytes per second taken from the source (e.g. 200M).")
@click.option("--retries", type=click.IntRange(0, 100), default=6, envvar="LOCALMODEL_FETCH_RETRIES",
              help="Transient failures in a row tolerated per request (with backoff).")
@click.option("--force", is_flag=True, help="Download even if a complete copy is present.")
@click.option("--verify", type=click.Choice(["full", "sha256", "none"]), default="full",
              envvar="LOCALMODEL_FETCH_VERIFY",
              help="full: every file hashed once, with the cheapest digest its source guarantees "
                   "(S3 CRC64NVME/CRC32C/CRC32/SHA-256 checksums, GCS crc32c, HF sha256, else the "
                   "ETag or Content-MD5), BLAKE3 when there is none; sha256: never md5-based digests "
                   "(S3 ETags, Content-MD5, which cost more CPU than sha256): BLAKE3 instead "
                   "(the choice keeps its older name); "
                   "none: sizes only, no hashing, no digest in the manifest (benchmarks, "
                   "sources trusted end to end).")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "bar", "json", "none"]),
              default="auto", help="auto: a bar on a terminal, JSON lines otherwise.")
@click.option("--progress-interval", type=float, default=5.0,
              help="Seconds between JSON progress lines.")
def fetch(pairs: tuple[str, ...], concurrency: int, chunk_size: int, limit_rate: int | None,
          retries: int, force: bool, verify: str, progress_mode: str,
          progress_interval: float) -> None:
    """Download models: each SRC (s3://, gs://, hf://, oci://, https://, Azure blob URL,
    file://, pvc:// or a path) into its DEST folder, the storage-initializer way. Pairs run at
    the same time, sharing --concurrency and --limit-rate as one download would; the first
    failure stops the others (a rerun resumes them).

    Credentials and endpoints come from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
    AZURE_*, HF_TOKEN, <host>-headers...; registry logins from DOCKER_CONFIG or
    ~/.docker/config.json), as do STORAGE_ALLOW_PATTERNS and
    STORAGE_IGNORE_PATTERNS. A DEST is complete once its manifest is written; a rerun resumes an
    interrupted download. Exit status: 0 done, 1 failed, 75 failed but worth retrying.
    """
    from rich.console import Console

    from localmodel.errors import LocalModelError, TransientError
    from localmodel.fetch import BackoffPolicy, DownloadCancelled, FetchOptions, SharedBudget, download
    from localmodel.fetch.patterns import parse_patterns
    from localmodel.fetch.reporting import JsonLines, ProgressBar
    from localmodel.sources.uris import redact_uri

    if len(pairs) % 2:
        raise click.UsageError("arguments come in pairs: SRC DEST [SRC DEST]...")
    settings = dict(os.environ)  # the one place settings are read from the environment
    _add_docker_config(settings)
    options = FetchOptions(
        concurrency=concurrency, chunk_size=chunk_size or FetchOptions.chunk_size,
        rate_limit=limit_rate, force=force, backoff=BackoffPolicy(max_retries=retries),
        verify=verify != "none", verify_md5=verify == "full",
        allow_patterns=parse_patterns(settings.get("STORAGE_ALLOW_PATTERNS")),
        ignore_patterns=parse_patterns(settings.get("STORAGE_IGNORE_PATTERNS")),
    )
    console = Console(stderr=True)
    mode = progress_mode
    if mode == "auto":
        mode = "bar" if console.is_terminal else "json"
    _log_to(console, as_json=mode != "bar")
    jobs = list(zip(pairs[::2], pairs[1::2]))
    # One set of budgets for every pair: a 1 GiB file's hashing tail and fsync overlap the
    # next pair's transfer instead of leaving the link idle (bench/download.py, http rows).
    budget = SharedBudget(options.concurrency, options.rate_limit)
    output_lock = threading.Lock()

    def one(source: str, dest: str) -> None:
        shown = redact_uri(source)
        if budget.cancelled.is_set():
            raise DownloadCancelled(f"{shown}: not started, another download failed")
        log = JsonLines(sys.stderr, shown, dest, progress_interval)
        started = time.monotonic()
        if mode == "bar" and len(jobs) == 1:
            with ProgressBar(console, shown) as bar:
                manifest = download(source, dest, settings=settings, options=options, progress=bar,
                                    budget=budget)
        else:  # bars of pairs running together would overwrite each other: a line each at the end
            manifest = download(source, dest, settings=settings, options=options,
                                progress=log if mode == "json" else None, budget=budget)
        seconds = time.monotonic() - started
        with output_lock:
            if mode == "json":
                log.emit("done", files=len(manifest.files), bytes=manifest.total_size,
                         seconds=round(seconds, 3), revision=manifest.revision)
            elif mode == "bar":
                console.print(f"{shown} -> {dest}: {len(manifest.files)} files, "
                              f"{manifest.total_size} bytes in {seconds:.1f}s")

    failure: tuple[str, str, BaseException] | None = None
    with ThreadPoolExecutor(max_workers=min(len(jobs), options.concurrency) or 1,
                            thread_name_prefix="localmodel-pair") as pool:
        futures = {pool.submit(one, source, dest): (source, dest) for source, dest in jobs}
        try:
            for future in as_completed(futures):
                error = future.exception()
                if error is None or isinstance(error, DownloadCancelled):
                    continue
                budget.cancelled.set()  # stop the others (the engine did if it was fetching)
                if failure is None:
                    failure = (*futures[future], error)
        except BaseException:  # Ctrl-C: stop every download (their staging stays, to resume)
            budget.cancelled.set()
            raise
    if failure is not None:
        source, dest, exc = failure
        if not isinstance(exc, (LocalModelError, ImportError)):
            raise exc
        reason = getattr(exc, "reason", "MissingDependency")
        click.echo(f"localmodel fetch: {redact_uri(source)} -> {dest}: {reason}: {exc}", err=True)
        sys.exit(EXIT_TRANSIENT if isinstance(exc, TransientError) else 1)


@main.command("prepare-root")
@click.option("--root", type=click.Path(file_okay=False, readable=False, path_type=Path), default=Path("/mnt/models"),
              show_default=True, help="The agent's --root: the hostPath volume's mount.")
@click.option("--uid", type=click.IntRange(min=0), default=1000, show_default=True,
              help="The agent's runAsUser.")
@click.option("--gid", type=click.IntRange(min=0), default=1000, show_default=True,
              help="The agent's runAsGroup.")
def prepare_root_command(root: Path, uid: int, gid: int) -> None:
    """Give the models directory to the agent's user (the agent Pod's init container).

    The kubelet creates a new hostPath as root, and fsGroup does not apply to it. Run as UID 0
    with only CAP_CHOWN, this changes the owner of ROOT and of its models/, manifests/ and
    staging/ folders to UID:GID where they belong to someone else. It never recurses into model
    data, never follows a symbolic link (a link or file under one of those names is refused, exit
    1), creates nothing and changes no mode; run again, it changes nothing.
    """
    from localmodel.node.prepare_root import UnsafeRootError, prepare_root

    try:
        changes = prepare_root(root, uid, gid)
    except UnsafeRootError as error:
        raise click.ClickException(str(error)) from error
    except PermissionError as error:
        raise click.ClickException(
            f"{error}: changing owners needs UID 0 with CAP_CHOWN (the init container's "
            f"securityContext)") from error
    for change in changes:
        click.echo(change.describe(uid, gid))
    if not changes:
        click.echo(f"{root}: owned by {uid}:{gid} already; nothing changed")


main.add_command(dev)
main.add_command(controller)
