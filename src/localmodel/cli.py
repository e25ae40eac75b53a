"""The `localmodel` command line: one group, one subcommand per job.

Subcommands live beside the code they drive and are attached here, so `--help` lists them all.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import click

from localmodel import __version__
from localmodel.controller.command import controller
from localmodel.dev.commands import dev

if TYPE_CHECKING:
    from rich.console import Console


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
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True
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
# -- localmodel fetch ---------------------------------------------------------------------

#: Exit code when the failure is transient and a retry may succeed (sysexits EX_TEMPFAIL).
EXIT_TRANSIENT = 75


def _log_to(console: Console, *, as_json: bool) -> None:
    """Warnings and above from localmodel go to stderr: JSON lines, or rich text beside a bar."""
    import logging

    from rich.logging import RichHandler

    from localmodel.fetch.reporting import JsonLogFormatter

    handler: logging.Handler
    if as_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
    else:
        handler = RichHandler(console=console, show_path=False)
    logger = logging.getLogger("localmodel")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from localmodel.fetch.reporting import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(context_settings={"show_default": True})
@click.argument("pairs", nargs=-1, required=True, metavar="SRC DEST [SRC DEST]...")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8,
              envvar="LOCALMODEL_FETCH_CONCURRENCY", help="Parallel ranged requests.")
@click.option("--chunk-size", default="16Mi", callback=_size, envvar="LOCALMODEL_FETCH_CHUNK_SIZE",
              help="Bytes per ranged request (e.g. 16Mi).")
@click.option("--limit-rate", default=None, callback=_size, envvar="LOCALMODEL_FETCH_LIMIT_RATE",
              help="Cap on bytes per second taken from the source (e.g. 200M).")
@click.option("--retries", type=click.IntRange(0, 100), default=6, envvar="LOCALMODEL_FETCH_RETRIES",
              help="Transient failures in a row tolerated per request (with backoff).")
@click.option("--force", is_flag=True, help="Download even if a complete copy is present.")
@click.option("--verify", type=click.Choice(["full", "sha256", "none"]), default="full",
              envvar="LOCALMODEL_FETCH_VERIFY",
              help="full: sha256 of every file and every provider digest; sha256: skip md5-based "
                   "provider digests (S3 ETags, Content-MD5), which cost more CPU than sha256; "
                   "none: sizes only, no hashing, no sha256 in the manifest (benchmarks, "
                   "sources trusted end to end).")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "bar", "json", "none"]),
              default="auto", help="auto: a bar on a terminal, JSON lines otherwise.")
@click.option("--progress-interval", type=float, default=5.0,
              help="Seconds between JSON progress lines.")
def fetch(pairs: tuple[str, ...], concurrency: int, chunk_size: int, limit_rate: int | None,
          retries: int, force: bool, verify: str, progress_mode: str,
          progress_interval: float) -> None:
    """Download models: each SRC (s3://, gs://, hf://, https://, Azure blob URL, file://,
    pvc:// or a path) into its DEST folder, the storage-initializer way.

    Credentials and endpoints come from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
    AZURE_*, HF_TOKEN, <host>-headers...), as do STORAGE_ALLOW_PATTERNS and
    STORAGE_IGNORE_PATTERNS. A DEST is complete once its manifest is written; a rerun resumes an
    interrupted download. Exit status: 0 done, 1 failed, 75 failed but worth retrying.
    """
    from rich.console import Console

    from localmodel.errors import LocalModelError, TransientError
    from localmodel.fetch import BackoffPolicy, FetchOptions, download
    from localmodel.fetch.patterns import parse_patterns
    from localmodel.fetch.reporting import JsonLines, ProgressBar
    from localmodel.sources.registry import redact_uri

    if len(pairs) % 2:
        raise click.UsageError("arguments come in pairs: SRC DEST [SRC DEST]...")
    settings = dict(os.environ)  # the one place settings are read from the environment
    options = FetchOptions(
        concurrency=concurrency, chunk_size=chunk_size or 16 * 1024 * 1024,
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
    for source, dest in zip(pairs[::2], pairs[1::2]):
        shown = redact_uri(source)
        log = JsonLines(sys.stderr, shown, dest, progress_interval)
        started = time.monotonic()
        try:
            if mode == "bar":
                with ProgressBar(console, shown) as bar:
                    manifest = download(source, dest, settings=settings, options=options,
                                        progress=bar)
            else:
                manifest = download(source, dest, settings=settings, options=options,
                                    progress=log if mode == "json" else None)
        except (LocalModelError, ImportError) as exc:
            reason = getattr(exc, "reason", "MissingDependency")
            click.echo(f"localmodel fetch: {shown} -> {dest}: {reason}: {exc}", err=True)
            sys.exit(EXIT_TRANSIENT if isinstance(exc, TransientError) else 1)
        seconds = time.monotonic() - started
        if mode == "json":
            log.emit("done", files=len(manifest.files), bytes=manifest.total_size,
                     seconds=round(seconds, 3), revision=manifest.revision)
        elif mode == "bar":
            console.print(f"{shown} -> {dest}: {len(manifest.files)} files, "
                          f"{manifest.total_size} bytes in {seconds:.1f}s")


main.add_command(dev)
main.add_command(controller)
