"""The informer against the real apiserver: a real 410 Gone makes it list again and lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from localmodel.dev.controlplane import ControlPlane
from localmodel.kube.client import async_client
from localmodel.kube.informer import Informer

from tests.controller.harness import create_namespace, unique, wait_for


@pytest.fixture(scope="module")
def compacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane that compacts etcd every second, so old resourceVersions really expire."""
    with ControlPlane(tmp_path_factory.mktemp("compacting"), controllers=(),
                      apiserver_args=["--etcd-compaction-interval=1s", "--watch-cache=false"]) as plane:
        yield plane


class StaleStart(Informer):
    """Starts its first watch from resourceVersion 1, long compacted out of the watch cache."""

    async def _list(self) -> str:
        version = await super()._list()
        return "1" if self.relists == 1 else version


def _expired(client: Client, namespace: str) -> bool:
    try:
        for _ in client.watch(ConfigMap, namespace=namespace, resource_version="1", server_timeout=1):
            return False
    except ApiError as error:
        return error.status.code == 410
    return False


def test_watch_from_expired_version_relists(compacting: ControlPlane) -> None:
    cluster = compacting
    kube_client = Client(KubeConfig.from_file(cluster.kubeconfig), field_manager="localmodel-tests")
    namespace = create_namespace(kube_client, unique("inf"))
    for i in range(3):  # move the resourceVersion well past 1
        kube_client.create(ConfigMap(metadata=ObjectMeta(name=f"before-{i}", namespace=namespace)))
    wait_for(lambda: _expired(kube_client, namespace), "etcd compaction to expire resourceVersion 1")

    async def scenario() -> tuple[int, set[str], list[str]]:
        client = async_client(str(cluster.kubeconfig))
        events: list[str] = []
        informer = StaleStart(client, ConfigMap, name="configmaps", namespace=namespace)
        informer.add_handler(lambda event, old, new: events.append(f"{event} {(new or old)['metadata']['name']}"))
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 30)
            while informer.relists < 2:  # the 410 on the first watch forced a second list
                await asyncio.sleep(0.1)
            await asyncio.to_thread(kube_client.create, ConfigMap(metadata=ObjectMeta(name="after", namespace=namespace)))
            await asyncio.to_thread(kube_client.delete, ConfigMap, "before-0", namespace=namespace)
            while (namespace, "after") not in informer.store or (namespace, "before-0") in informer.store:
                await asyncio.sleep(0.1)
            return informer.relists, {name for _, name in informer.store}, events
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    relists, names, events = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert relists >= 2
    assert {"after", "before-1", "before-2"} <= names and "before-0" not in names
    assert "DELETED before-0" in events and "ADDED after" in events


def test_unserved_api_group_reads_as_empty(kube: ControlPlane) -> None:
    """An API group that is not served (e.g. KServe's InferenceService CRD not installed) answers a
    plain-text 404; the informer must still report synced, empty, so the controller starts."""
    from lightkube.generic_resource import create_global_resource

    Widget = create_global_resource("absent.localmodel.dev", "v1", "Widget", "widgets")

    async def scenario() -> tuple[bool, bool, int]:
        client = async_client(str(kube.kubeconfig))
        informer = Informer(client, Widget, name="widgets", absent_retry=60)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 30)
            return informer.synced.is_set(), informer.served, len(informer.store)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    synced, served, stored = asyncio.run(scenario())
    assert synced and not served and stored == 0
