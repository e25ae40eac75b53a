"""The reference pages stay true to the code: every flag, metric and reason is documented, and
every link between the pages resolves."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from prometheus_client import CollectorRegistry

from localmodel.cli import main
from localmodel.controller.metrics import ControllerMetrics
from localmodel.dev.clidocs import blocks_in, commands, generated, update
from localmodel.errors import LocalModelError
from localmodel.node.metrics import AgentMetrics
from tests.reference import REPO

DOCS = REPO / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text()


# --- configuration.md --------------------------------------------------------------------------


def test_flag_tables_are_generated_from_the_current_commands() -> None:
    text = read("configuration.md")
    assert update(text, main) == text, "run `localmodel dev docs docs/configuration.md`"  # type: ignore[arg-type]


def test_every_command_has_a_flag_table() -> None:
    assert blocks_in(read("configuration.md")) == set(generated(main))  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "command"), list(commands(main)), ids=lambda v: v if isinstance(v, str) else "")  # type: ignore[arg-type]
def test_every_flag_is_documented_with_help(path: str, command: click.Command) -> None:
    text = read("configuration.md")
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{path} {param.opts[0]} has no help text"
        for flag in (*param.opts, *param.secondary_opts):
            assert f"`{flag}" in text, f"{path} {flag} is not in docs/configuration.md"


def test_every_localmodel_config_key_is_documented() -> None:
    from localmodel.kube.config import CredentialsConfig, LocalModelConfig

    text = read("configuration.md")
    for model in (LocalModelConfig, CredentialsConfig):
        for name, field in model.model_fields.items():
            key = field.alias or name
            assert f"`{key}`" in text or f"`gcs.{key}`" in text, f"{model.__name__}.{key}"


# --- metrics.md --------------------------------------------------------------------------------


def _registries() -> Iterator[tuple[str, CollectorRegistry]]:
    yield "agent", AgentMetrics().registry
    controller = ControllerMetrics()
    controller.watch_cluster(lambda: {"cache": 1}, lambda: [("LocalModelCache", {})], lambda: True)
    yield "controller", controller.registry


def _metrics() -> Iterator[tuple[str, str, str, set[str]]]:
    """(process, exposed name, type, label names) of every registered metric."""
    for process, registry in _registries():
        labels_of: dict[str, set[str]] = {}
        for collector, names in registry._collector_to_names.items():  # noqa: SLF001 - no public API
            for name in names:
                labels_of[name] = set(getattr(collector, "_labelnames", ()) or ())
        for family in registry.collect():
            labels = labels_of.get(family.name, set())
            labels |= {key for sample in family.samples for key in sample.labels if key != "le"}
            exposed = f"{family.name}_total" if family.type == "counter" else family.name
            yield process, exposed, family.type, labels


@pytest.mark.parametrize(("process", "name", "kind", "labels"), list(_metrics()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_metric_is_documented_with_type_and_labels(process: str, name: str, kind: str, labels: set[str]) -> None:
    rows = [line for line in read("metrics.md").splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"{process} metric {name} has {len(rows)} rows in docs/metrics.md"
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    assert cells[1] == kind, f"{name}: documented as {cells[1]}, registered as {kind}"
    documented = set(re.findall(r"`([a-z_]+)`", cells[2]))
    assert labels <= documented, f"{name}: labels {sorted(labels - documented)} not documented"


def test_metrics_md_lists_no_metric_that_does_not_exist() -> None:
    registered = {name for _, name, _, _ in _metrics()}
    documented = set(re.findall(r"^\| `(localmodel_[a-z_]+)` \|", read("metrics.md"), re.MULTILINE))
    assert documented == registered


# --- troubleshooting.md ------------------------------------------------------------------------


def _error_reasons() -> set[str]:
    import localmodel.kube.config  # noqa: F401 - defines ConfigError
    import localmodel.node.reconcile  # noqa: F401 - defines CredentialsUnavailableError

    found: set[str] = set()
    pending = [LocalModelError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "reason" in vars(cls) and cls is not LocalModelError:  # not the abstract middle classes
            found.add(cls.reason)
    return found


#: Reasons the agent reports without an exception class (plan.py, downloads.py, reconcile.py).
STATUS_REASONS = ("PathConflict", "Damaged", "DiskError", "InternalError", "Cancelled")


@pytest.mark.parametrize("reason", sorted(_error_reasons() | set(STATUS_REASONS)))
def test_every_reason_has_a_troubleshooting_entry(reason: str) -> None:
    assert f"`{reason}`" in read("troubleshooting.md")


@pytest.mark.parametrize("reason", STATUS_REASONS)
def test_status_reasons_listed_here_still_exist(reason: str) -> None:
    sources = "".join(p.read_text() for p in (REPO / "src" / "localmodel" / "node").glob("*.py"))
    assert f'"{reason}"' in sources


def _event_reasons() -> set[str]:
    sources = "".join(p.read_text() for p in (REPO / "src" / "localmodel").rglob("*.py"))
    agent = set(re.findall(r'_event\(\s*"(?:Normal|Warning)",\s*"([A-Za-z]+)"', sources))
    agent |= set(re.findall(r'AgentEvent\(\s*"(?:Normal|Warning)",\s*"([A-Za-z]+)"', sources))
    controller = set(re.findall(r'CacheEvent\(\s*(?:NORMAL|WARNING),\s*"([A-Za-z]+)"', sources))
    assert agent and controller
    return agent | controller


@pytest.mark.parametrize("reason", sorted(_event_reasons()))
def test_every_event_reason_is_in_the_architecture_page(reason: str) -> None:
    assert f"`{reason}`" in read("architecture.md")


# --- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_resolve(page: str) -> None:
    path = DOCS / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links to missing {target}"
