"""In-memory indexes the controller keeps beside its informer stores (pure, no I/O).

`Membership` is the group → nodes index: each node is matched against every group's PV node
affinity when the node or the group changes, never on every reconcile, so a cache's members are a
dictionary lookup even with 1000 nodes. `RefIndex` maps a cache to the objects that point at it
(LocalModelNodes listing it, consumers labelled with it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from localmodel.controller.affinity import node_matches
from localmodel.controller.names import CacheRef
from localmodel.controller.views import NodeInfo

T = TypeVar("T", bound=Hashable)


class Membership:
    def __init__(self) -> None:
        self._terms: dict[str, list[Mapping[str, Any]] | None] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._members: dict[str, set[str]] = {}
        self._groups_of: dict[str, set[str]] = {}

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def members(self, group: str) -> set[str]:
        return self._members.get(group, set())

    def groups_of(self, node: str) -> set[str]:
        return self._groups_of.get(node, set())

    def member_nodes(self, groups: Iterable[str]) -> list[NodeInfo]:
        """Member nodes of `groups`, each once, sorted by name."""
        names: set[str] = set()
        for group in groups:
            names |= self.members(group)
        return [self._nodes[n] for n in sorted(names)]

    def _place(self, node: str, groups: set[str]) -> None:
        for group in self._groups_of.get(node, set()) - groups:
            self._members[group].discard(node)
        for group in groups:
            self._members.setdefault(group, set()).add(node)
        if groups:
            self._groups_of[node] = groups
        else:
            self._groups_of.pop(node, None)

    def set_node(self, name: str, info: NodeInfo | None) -> set[str]:
        """Add, update (info) or remove (None) a node; returns the groups whose members changed."""
        before = set(self.groups_of(name))
        if info is None:
            self._nodes.pop(name, None)
            after: set[str] = set()
        else:
            self._nodes[name] = info
            after = {g for g, terms in self._terms.items() if node_matches(terms, name, info.labels)}
        self._place(name, after)
        return before ^ after

    def set_group(self, name: str, terms: list[Mapping[str, Any]] | None, present: bool = True) -> set[str]:
        """Add, update or remove (present=False) a group; returns the nodes that joined or left it."""
        before = set(self.members(name))
        if present:
            self._terms[name] = terms
            after = {n for n, info in self._nodes.items() if node_matches(terms, n, info.labels)}
        else:
            self._terms.pop(name, None)
            after = set()
        for node in before - after:
            self._groups_of[node].discard(name)
            if not self._groups_of[node]:
                del self._groups_of[node]
        for node in after - before:
            self._groups_of.setdefault(node, set()).add(name)
        if after:
            self._members[name] = after
        else:
            self._members.pop(name, None)
        return before ^ after


class RefIndex(Generic[T]):
    """cache → set of items, maintained from each item's current set of caches."""

    def __init__(self) -> None:
        self._by_cache: dict[CacheRef, set[T]] = {}
        self._of_item: dict[T, set[CacheRef]] = {}

    def get(self, ref: CacheRef) -> set[T]:
        return self._by_cache.get(ref, set())

    def set(self, item: T, refs: Iterable[CacheRef]) -> set[CacheRef]:
        """Point `item` at `refs` (empty to remove); returns the caches whose item set changed."""
        new = set(refs)
        old = self._of_item.get(item, set())
        for ref in old - new:
            bucket = self._by_cache[ref]
            bucket.discard(item)
            if not bucket:
                del self._by_cache[ref]
        for ref in new - old:
            self._by_cache.setdefault(ref, set()).add(item)
        if new:
            self._of_item[item] = new
        else:
            self._of_item.pop(item, None)
        return old ^ new
