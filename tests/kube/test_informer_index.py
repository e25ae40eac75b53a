"""Informer indexes (client-go's Indexer, small): kept in step with the store before handlers
run, through adds, changes, deletes, relists and our own writes."""

from __future__ import annotations

from typing import Any

from localmodel.kube.informer import Informer


def cache(name: str, groups: list[str], rv: int, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(rv)}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta, "spec": {"nodeGroups": groups}}


def groups_of(obj: dict[str, Any]) -> list[str]:
    return list((obj.get("spec") or {}).get("nodeGroups") or [])


def test_index_follows_adds_changes_and_deletes_before_handlers_run() -> None:
    informer = Informer(None, None, name="caches")  # type: ignore[arg-type]
    informer.add_index("groups", groups_of)
    seen_by_handler: list[set[tuple[str, str]]] = []
    informer.add_handler(lambda event, old, new: seen_by_handler.append(informer.keys_by_index("groups", "gpu")))
    informer._apply("ADDED", cache("a", ["gpu", "cpu"], 1))
    informer._apply("ADDED", cache("b", ["gpu"], 2, namespace="team"))
    assert informer.keys_by_index("groups", "gpu") == {("", "a"), ("team", "b")}
    assert [o["metadata"]["name"] for o in informer.by_index("groups", "gpu")] == ["a", "b"]
    assert seen_by_handler[0] == {("", "a")}
    informer._apply("MODIFIED", cache("a", ["cpu"], 3))
    assert informer.keys_by_index("groups", "gpu") == {("team", "b")}
    assert informer.keys_by_index("groups", "cpu") == {("", "a")}
    informer._apply("DELETED", cache("b", ["gpu"], 4, namespace="team"))
    assert informer.keys_by_index("groups", "gpu") == set()
    assert informer.by_index("groups", "nothing") == []


def test_an_older_version_changes_nothing_and_our_writes_count() -> None:
    informer = Informer(None, None, name="caches")  # type: ignore[arg-type]
    informer.add_index("groups", groups_of)
    informer.write_through(cache("a", ["gpu"], 5))
    informer._apply("MODIFIED", cache("a", ["cpu"], 4))  # a stale watch event after our write
    assert informer.keys_by_index("groups", "gpu") == {("", "a")}


def test_an_index_added_late_covers_what_is_stored() -> None:
    informer = Informer(None, None, name="caches")  # type: ignore[arg-type]
    informer._apply("ADDED", cache("a", ["gpu"], 1))
    informer.add_index("groups", groups_of)
    assert informer.keys_by_index("groups", "gpu") == {("", "a")}
