"""Fixtures for the control-plane tests: a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace


@pytest.fixture
def namespace(kube_client: Client) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_client.create(Namespace(metadata=ObjectMeta(name=name)))
    yield name
    kube_client.delete(Namespace, name)
