"""The `localmodel` command line: one group, one subcommand per job.

Subcommands live beside the code they drive and are attached here, so `--help` lists them all.
"""

from __future__ import annotations

import click

from localmodel import __version__
from localmodel.controller.command import controller
from localmodel.dev.commands import dev


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


main.add_command(dev)
main.add_command(controller)
