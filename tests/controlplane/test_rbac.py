"""RBAC is enforced: client-cert users get exactly what their bindings grant."""

from __future__ import annotations

import pytest
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.authentication_v1 import SelfSubjectReview
from lightkube.resources.core_v1 import Secret
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from localmodel.dev.controlplane import ControlPlane


def _client(kubeconfig_path: object) -> Client:
    return Client(KubeConfig.from_file(kubeconfig_path))  # type: ignore[arg-type]


def _grant_secret_listing(admin: Client, namespace: str, subject: Subject) -> None:
    admin.create(
        Role(
            metadata=ObjectMeta(name="list-secrets", namespace=namespace),
            rules=[PolicyRule(apiGroups=[""], resources=["secrets"], verbs=["list"])],
        )
    )
    admin.create(
        RoleBinding(
            metadata=ObjectMeta(name="list-secrets", namespace=namespace),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name="list-secrets"),
            subjects=[subject],
        )
    )


def test_user_cert_authenticates_with_its_name_and_groups(kube: ControlPlane) -> None:
    user = _client(kube.kubeconfig_for_user("carol", ["team-x", "team-y"]))
    info = user.create(SelfSubjectReview()).status.userInfo
    assert info.username == "carol"
    assert {"team-x", "team-y", "system:authenticated"} <= set(info.groups)


def test_user_without_bindings_is_forbidden_to_list_secrets(kube: ControlPlane, namespace: str) -> None:
    user = _client(kube.kubeconfig_for_user("mallory"))
    with pytest.raises(ApiError) as denied:
        list(user.list(Secret, namespace=namespace))
    assert denied.value.status.code == 403


def test_role_binding_to_user_grants_listing(kube: ControlPlane, kube_client: Client, namespace: str) -> None:
    _grant_secret_listing(kube_client, namespace, Subject(kind="User", name="alice", apiGroup="rbac.authorization.k8s.io"))
    user = _client(kube.kubeconfig_for_user("alice"))
    assert list(user.list(Secret, namespace=namespace)) == []
    # The grant is namespaced: the same user is still denied in another namespace.
    with pytest.raises(ApiError) as denied:
        list(user.list(Secret, namespace="kube-system"))
    assert denied.value.status.code == 403


def test_role_binding_to_group_grants_listing(kube: ControlPlane, kube_client: Client, namespace: str) -> None:
    _grant_secret_listing(kube_client, namespace, Subject(kind="Group", name="readers", apiGroup="rbac.authorization.k8s.io"))
    member = _client(kube.kubeconfig_for_user("bob", ["readers"]))
    outsider = _client(kube.kubeconfig_for_user("eve", ["writers"]))
    assert list(member.list(Secret, namespace=namespace)) == []
    with pytest.raises(ApiError) as denied:
        list(outsider.list(Secret, namespace=namespace))
    assert denied.value.status.code == 403
