"""The Helm chart: lints, renders the kustomize base's objects, and each value does its job."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import localmodel
from localmodel.api.crds import render_all
from tests.packaging import manifests
from tests.packaging.conftest import REPO, Render

CHART = REPO / "charts" / "localmodel"
PART_OF = "app.kubernetes.io/part-of"
WEBHOOK_KINDS = {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}


def _only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[manifests.key(o) for o in found]}"
    return found[0]


def _container(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    containers = _only(objects, kind)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["manager"]
    return containers[0]


def _webhook_configurations(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WEBHOOK_KINDS]


def _inject_ca(objects: list[dict[str, Any]]) -> bool:
    return any("cert-manager.io/inject-ca-from" in (o["metadata"].get("annotations") or {})
               for o in objects if o["kind"] in WEBHOOK_KINDS)


def _kustomize_install(kustomize_objects: list[dict[str, Any]],
                       kustomize_cert_manager_objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a kustomize install creates: deploy/, plus deploy/cert-manager/ when its webhooks
    expect cert-manager to inject their CA."""
    if _inject_ca(kustomize_objects):
        return kustomize_objects + kustomize_cert_manager_objects
    return kustomize_objects


def _values_like_kustomize(kustomize_objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Chart values that select the same optional objects as the kustomize base has."""
    names = {o["metadata"]["name"] for o in kustomize_objects if o["kind"] in WEBHOOK_KINDS}
    webhooks: dict[str, Any] = {
        "enabled": bool(names),
        "validating": "localmodelcache.serving.kserve.io" in names,
        "pods": "localmodel-pod-mounter" in names,
        "inferenceServices": "localmodel-inferenceservice-defaulter" in names,
    }
    if names:
        webhooks["certificate"] = {"source": "certManager"} if _inject_ca(kustomize_objects) else {
            "source": "manual", "caBundle": base64.b64encode(b"placeholder").decode()}
    return {"namespace": {"create": True}, "webhooks": webhooks}


# ---- helm itself and the CRDs -----------------------------------------------------------------

def test_helm_is_the_pinned_version(helm: Path) -> None:
    script = (REPO / "hack" / "build-helm.sh").read_text()
    pinned = re.search(r"HELM_VERSION:-(v[0-9.]+)", script)
    assert pinned, "hack/build-helm.sh pins no helm version"
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(pinned[1]), out


@pytest.mark.parametrize("values", [
    {},
    {"webhooks": {"certificate": {"source": "certManager"}}},
    {"webhooks": {"enabled": False}},
    {"namespace": {"name": "", "create": True}, "config": {"create": False}},
], ids=["defaults", "webhooks-cert-manager", "no-webhooks", "release-namespace"])
def test_lint_strict(helm: Path, values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--values", str(values_file)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_versions_agree() -> None:
    """Chart, image tag in both install paths, and the Python package are released together."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    kustomization = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    image = next(i for i in kustomization["images"] if i["name"] == "localmodel")
    assert chart["version"] == chart["appVersion"] == image["newTag"] == localmodel.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == image["newName"]


def test_package(helm: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(helm), "package", str(CHART), "--destination", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / f"localmodel-{localmodel.__version__}.tgz") as archive:
        names = set(archive.getnames())
    assert {f"localmodel/crds/{name}" for name in render_all()} <= names
    assert {"localmodel/Chart.yaml", "localmodel/values.yaml", "localmodel/values.schema.json"} <= names


def test_chart_crds_are_the_generated_crds() -> None:
    """One source of truth: charts/localmodel/crds and deploy/crds both are `localmodel crds`."""
    generated = render_all()
    chart_files = {p.name: p.read_text() for p in (CHART / "crds").iterdir()}
    assert chart_files == generated, (
        "charts/localmodel/crds is stale: run `localmodel crds --write charts/localmodel/crds`")
    deploy_files = {p.name: p.read_text() for p in (REPO / "deploy" / "crds").iterdir()}
    assert chart_files == deploy_files


def test_include_crds_renders_each_crd_once(render_chart: Render) -> None:
    objects = render_chart(include_crds=True)
    crds = {o["metadata"]["name"]: o for o in objects if o["kind"] == "CustomResourceDefinition"}
    expected = {doc["metadata"]["name"]: doc
                for text in render_all().values() for doc in manifests.load_documents(text)}
    assert crds == expected


# ---- equivalence with the kustomize base ------------------------------------------------------

def test_renders_the_kustomize_base_objects(render_chart: Render, kustomize_objects: list[dict[str, Any]],
                                            kustomize_cert_manager_objects: list[dict[str, Any]]) -> None:
    chart = manifests.by_key(render_chart(_values_like_kustomize(kustomize_objects)))
    installed = _kustomize_install(kustomize_objects, kustomize_cert_manager_objects)
    base = manifests.by_key(o for o in installed if o["kind"] != "CustomResourceDefinition")
    assert sorted(chart) == sorted(base)


def test_default_objects_equal_the_kustomize_base(render_chart: Render, kustomize_objects: list[dict[str, Any]],
                                                  kustomize_cert_manager_objects: list[dict[str, Any]]) -> None:
    """Same specs, not just the same names: the values that pick the base's options change
    nothing but labels."""
    chart = manifests.by_key(render_chart(_values_like_kustomize(kustomize_objects)))
    installed = _kustomize_install(kustomize_objects, kustomize_cert_manager_objects)
    compared = 0
    for key, theirs in manifests.by_key(installed).items():
        if key[0] == "CustomResourceDefinition":
            continue
        ours = chart[key]
        assert ours["metadata"]["labels"][PART_OF] == "localmodel", key
        assert _normalised(ours) == _normalised(theirs), key
        compared += 1
    assert compared >= 20


def _normalised(obj: dict[str, Any]) -> dict[str, Any]:
    obj = manifests.without_helm_labels(obj)
    labels = obj["metadata"].get("labels", {})
    labels.pop(PART_OF, None)
    if not labels:
        obj["metadata"].pop("labels", None)
    if obj["kind"] == "ConfigMap":
        obj["data"] = {k: json.loads(v) for k, v in obj["data"].items()}
    return obj


# ---- values -----------------------------------------------------------------------------------

def test_image_is_one_for_agent_and_controller(render_chart: Render) -> None:
    objects = render_chart({"image": {"repository": "registry.example/lm", "tag": "1.2.3",
                                      "pullPolicy": "Always"},
                            "imagePullSecrets": [{"name": "regcred"}]})
    for kind in ("DaemonSet", "Deployment"):
        container = _container(objects, kind)
        assert container["image"] == "registry.example/lm:1.2.3"
        assert container["imagePullPolicy"] == "Always"
        assert _only(objects, kind)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_image_defaults_to_app_version_and_digest_wins(render_chart: Render) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert _container(render_chart(), "DaemonSet")["image"] == f"ghcr.io/localmodel/localmodel:{app_version}"
    digest = "sha256:" + "ab" * 32
    pinned = render_chart({"image": {"tag": "ignored", "digest": digest}})
    assert _container(pinned, "Deployment")["image"] == f"ghcr.io/localmodel/localmodel@{digest}"


def test_agent_host_path_node_selector_tolerations(render_chart: Render) -> None:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Helm merges maps into the defaults: the default label is dropped with null.
    objects = render_chart({"agent": {"hostPath": "/var/lib/models", "tolerations": tolerations,
                                      "nodeSelector": {"pool": "gpu", "kserve/localmodel": None}}})
    pod = _only(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == tolerations
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["hostPath"] == {"path": "/var/lib/models", "type": "DirectoryOrCreate"}
    # The container's view stays KServe's /mnt/models whatever the host path.
    assert pod["containers"][0]["command"][:4] == ["localmodel", "agent", "--root", "/mnt/models"]


def test_agent_without_node_selector_runs_everywhere(render_chart: Render) -> None:
    pod = _only(render_chart({"agent": {"nodeSelector": None}}), "DaemonSet")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod


def test_resources_and_replicas(render_chart: Render) -> None:
    agent_resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    controller_resources = {"requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"cpu": "1", "memory": "128Mi"}}
    objects = render_chart({"agent": {"resources": agent_resources},
                            "controller": {"resources": controller_resources, "replicas": 2}})
    assert _container(objects, "DaemonSet")["resources"] == agent_resources
    assert _container(objects, "Deployment")["resources"] == controller_resources
    assert _only(objects, "Deployment")["spec"]["replicas"] == 2


def test_metrics_and_health_ports(render_chart: Render) -> None:
    objects = render_chart({"agent": {"ports": {"metrics": 9100, "health": 9101}},
                            "controller": {"ports": {"metrics": 9200, "health": 9201, "webhook": 9444},
                                           "metricsService": {"port": 80}}})
    agent = _container(objects, "DaemonSet")
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {"metrics": 9100, "health": 9101,
                                                                       "peer": 8082}
    assert agent["command"][4:] == ["--metrics-port=9100", "--health-port=9101"]
    controller = _container(objects, "Deployment")
    assert {p["name"]: p["containerPort"] for p in controller["ports"]} == {
        "metrics": 9200, "health": 9201, "webhook-server": 9444}
    assert controller["command"][4:] == ["--metrics-port=9200", "--health-port=9201", "--webhook-port=9444"]
    service = _only(objects, "Service", "kserve-localmodel-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 80, "targetPort": "metrics"}]


def test_peer_to_peer_values_become_agent_flags(render_chart: Render) -> None:
    objects = render_chart({"agent": {"ports": {"peer": 9082},
                                      "peers": {"originSlots": 3, "rateLimit": "500Mi",
                                                "tokenExpirationSeconds": 7200}}})
    agent = _container(objects, "DaemonSet")
    assert agent["command"][4:] == ["--peer-port=9082", "--origin-slots=3", "--peer-rate-limit=500Mi"]
    assert {p["name"]: p["containerPort"] for p in agent["ports"]}["peer"] == 9082
    volume = next(v for v in _only(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "peer-token")
    assert volume["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": "localmodel-peer", "expirationSeconds": 7200, "path": "token"}
    off = _container(render_chart({"agent": {"peers": {"enabled": False}}}), "DaemonSet")
    assert off["command"][4:] == ["--peer-port=-1"]


def test_default_ports_add_no_flags(render_chart: Render) -> None:
    objects = render_chart()
    assert _container(objects, "DaemonSet")["command"] == ["localmodel", "agent", "--root", "/mnt/models"]
    assert _container(objects, "Deployment")["command"] == [
        "localmodel", "controller", "--webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs"]


@pytest.mark.parametrize(("kind", "command"), [("DaemonSet", "agent"), ("Deployment", "controller")])
def test_cli_accepts_every_flag_the_chart_passes(render_chart: Render, kind: str, command: str) -> None:
    from localmodel.cli import main

    subcommand = main.commands.get(command)  # type: ignore[attr-defined]
    assert subcommand is not None, f"the chart runs `localmodel {command}`, which the CLI no longer has"
    # Every option the chart can add: ports off their defaults, ISVC defaulting off.
    objects = render_chart({"agent": {"ports": {"metrics": 9100, "health": 9101, "peer": 9102},
                                      "peers": {"originSlots": 2, "rateLimit": "1G"}},
                            "controller": {"ports": {"metrics": 9200, "health": 9201, "webhook": 9202}},
                            "webhooks": {"inferenceServices": False}})
    argv = _container(objects, kind)["command"]
    assert argv[:2] == ["localmodel", command]
    passed = {arg.split("=", 1)[0] for arg in argv[2:] if arg.startswith("--")}
    accepted = {option for param in subcommand.params for option in (*param.opts, *param.secondary_opts)}
    assert passed <= accepted, f"`localmodel {command}` lacks {sorted(passed - accepted)}"


def test_only_the_init_container_runs_as_root_with_cap_chown_alone(render_chart: Render) -> None:
    """A fresh node without a manual chown (`localmodel prepare-root`), while the agent keeps
    no root and no capability."""
    pod = _only(render_chart(), "DaemonSet")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["name"] == "prepare-root" and init["image"] == pod["containers"][0]["image"]
    assert init["command"] == ["localmodel", "prepare-root", "--root", "/mnt/models",
                               "--uid", "1000", "--gid", "1000"]
    assert init["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"add": ["CHOWN"], "drop": ["ALL"]},
        "privileged": False, "readOnlyRootFilesystem": True,
        "runAsGroup": 0, "runAsNonRoot": False, "runAsUser": 0}
    assert init["volumeMounts"] == [{"name": "models", "mountPath": "/mnt/models"}]
    agent = pod["containers"][0]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["runAsNonRoot"] is True and "runAsUser" not in agent["securityContext"]
    assert pod["securityContext"]["runAsUser"] == 1000

    from localmodel.cli import main

    command = main.commands["prepare-root"]  # type: ignore[attr-defined]
    accepted = {option for param in command.params for option in param.opts}
    assert {arg for arg in init["command"][2:] if arg.startswith("--")} <= accepted


def test_init_container_follows_the_pod_user_and_can_be_turned_off(render_chart: Render) -> None:
    objects = render_chart({"podSecurityContext": {"runAsUser": 2000, "runAsGroup": 3000}})
    [init] = _only(objects, "DaemonSet")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][-4:] == ["--uid", "2000", "--gid", "3000"]
    off = _only(render_chart({"agent": {"prepareRoot": {"enabled": False}}}), "DaemonSet")
    assert "initContainers" not in off["spec"]["template"]["spec"]


def test_extra_args_are_appended(render_chart: Render) -> None:
    objects = render_chart({"agent": {"extraArgs": ["--log-level=debug"]}})
    assert _container(objects, "DaemonSet")["command"][-1] == "--log-level=debug"


def test_namespaces_follow_values(render_chart: Render) -> None:
    objects = render_chart({"namespace": {"name": "ml-system", "create": True},
                            "jobNamespace": {"name": "ml-downloads"}})
    namespaced = [o for o in objects if "namespace" in o["metadata"]]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"ml-system", "ml-downloads"}
    assert {manifests.key(o) for o in namespaced if o["metadata"]["namespace"] == "ml-downloads"} == {
        ("Role", "ml-downloads", "kserve-localmodelnode-agent-credentials"),
        ("RoleBinding", "ml-downloads", "kserve-localmodelnode-agent-credentials")}
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"} == {"ml-system", "ml-downloads"}
    config = json.loads(_only(objects, "ConfigMap")["data"]["localModel"])
    assert config["jobNamespace"] == "ml-downloads"
    policy = _only(objects, "ValidatingAdmissionPolicy")
    assert "'system:serviceaccount:ml-system:kserve-localmodelnode-agent'" in \
        policy["spec"]["matchConditions"][0]["expression"]
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert {s["namespace"] for s in binding["subjects"]} == {"ml-system"}, manifests.key(binding)


def test_empty_namespace_means_the_release_namespace(helm: Path) -> None:
    text = manifests.helm_template(helm, CHART, {"namespace": {"name": ""}}, namespace="team-a")
    namespaced = [o for o in manifests.load_documents(text)
                  if "namespace" in o["metadata"] and o["metadata"]["name"] != "kserve-localmodelnode-agent-credentials"]
    assert namespaced and {o["metadata"]["namespace"] for o in namespaced} == {"team-a"}


def test_namespaces_can_be_left_to_others(render_chart: Render) -> None:
    """With KServe installed: its namespaces and its inferenceservice-config stay its own."""
    objects = render_chart({"jobNamespace": {"create": False}, "config": {"create": False}})
    assert not [o for o in objects if o["kind"] in ("Namespace", "ConfigMap")]


def test_config_values_reach_the_config_map(render_chart: Render) -> None:
    objects = render_chart({"config": {"localModel": {"reconcilationFrequencyInSecs": 15,
                                                      "disableVolumeManagement": True}}})
    config = json.loads(_only(objects, "ConfigMap")["data"]["localModel"])
    assert config["reconcilationFrequencyInSecs"] == 15
    assert config["disableVolumeManagement"] is True
    assert config["fsGroup"] == 1000  # untouched defaults stay


def test_admission_policy_can_be_turned_off(render_chart: Render) -> None:
    objects = render_chart({"agent": {"ownNodeAdmissionPolicy": False}})
    assert not [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]


# ---- webhooks and their certificate -----------------------------------------------------------

def test_webhooks_on_by_default_with_a_certificate_made_by_helm(render_chart: Render) -> None:
    objects = render_chart()
    assert {o["metadata"]["name"] for o in objects if o["kind"] in WEBHOOK_KINDS} == {
        "localmodelcache.serving.kserve.io", "localmodel-pod-mounter",
        "localmodel-inferenceservice-defaulter"}
    assert _only(objects, "Secret")["metadata"]["name"] == "localmodel-webhook-server-cert"
    assert "--no-isvc-defaulting" not in _container(objects, "Deployment")["command"]


def test_webhooks_can_be_turned_off(render_chart: Render) -> None:
    objects = render_chart({"webhooks": {"enabled": False}})
    assert not {o["kind"] for o in objects} & (WEBHOOK_KINDS | {"Certificate", "Issuer", "Secret"})
    # Nothing calls the InferenceService defaulting, so the controller does not serve it.
    assert _container(objects, "Deployment")["command"][-1] == "--no-isvc-defaulting"


def test_webhooks_with_cert_manager(render_chart: Render) -> None:
    objects = render_chart({"webhooks": {"certificate": {"source": "certManager"}}})
    certificate = _only(objects, "Certificate")
    assert certificate["spec"]["secretName"] == "localmodel-webhook-server-cert"
    assert certificate["spec"]["dnsNames"] == [
        "localmodel-webhook-server-service.kserve.svc",
        "localmodel-webhook-server-service.kserve.svc.cluster.local"]
    assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": "localmodel-selfsigned-issuer"}
    assert _only(objects, "Issuer")["spec"] == {"selfSigned": {}}
    configurations = _webhook_configurations(objects)
    assert len(configurations) == 3
    for configuration in configurations:
        assert configuration["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": "kserve/localmodel-serving-cert"}
        for hook in configuration["webhooks"]:
            assert "caBundle" not in hook["clientConfig"]
            assert hook["clientConfig"]["service"]["name"] == "localmodel-webhook-server-service"
    validating = _only(objects, "ValidatingWebhookConfiguration")
    assert [h["clientConfig"]["service"]["path"] for h in validating["webhooks"]] == [
        "/validate-serving-kserve-io-v1alpha1-localmodelcache",
        "/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache"]


def test_webhooks_follow_their_switches(render_chart: Render) -> None:
    def hooks(webhooks: dict[str, Any]) -> dict[str, list[str]]:
        objects = render_chart({"webhooks": webhooks})
        return {o["metadata"]["name"]: [h["name"] for h in o["webhooks"]]
                for o in objects if o["kind"] in WEBHOOK_KINDS}

    assert hooks({"validating": False, "inferenceServices": False}) == {
        "localmodel-pod-mounter": ["pods.localmodel.kserve.io"]}
    assert hooks({"validating": False, "pods": False}) == {"localmodel-inferenceservice-defaulter": [
        "inferenceservice.localmodel.kserve.io", "llminferenceservice.localmodel.kserve.io"]}
    assert hooks({"pods": False, "inferenceServices": False}) == {"localmodelcache.serving.kserve.io": [
        "localmodelcache.kserve-webhook-server.validator",
        "localmodelnamespacecache.kserve-webhook-server.validator"]}
    objects = render_chart({"webhooks": {"inferenceServices": False}})
    assert "--no-isvc-defaulting" in _container(objects, "Deployment")["command"]
    pod_hook = _only(render_chart(), "MutatingWebhookConfiguration", "localmodel-pod-mounter")["webhooks"][0]
    assert pod_hook["objectSelector"] == {
        "matchExpressions": [{"key": "localmodel.kserve.io/cache", "operator": "Exists"}]}
    assert pod_hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                  "resources": ["pods"]}]
    assert pod_hook["failurePolicy"] == "Fail"


def test_webhooks_with_an_existing_issuer(render_chart: Render) -> None:
    objects = render_chart({"webhooks": {"certificate": {
        "source": "certManager", "issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}}}})
    assert not [o for o in objects if o["kind"] == "Issuer"]
    assert _only(objects, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def test_webhooks_with_a_certificate_made_by_helm(render_chart: Render, tmp_path: Path) -> None:
    objects = render_chart({"webhooks": {"certificate": {"source": "helm"}}})
    secret = _only(objects, "Secret", "localmodel-webhook-server-cert")
    assert secret["type"] == "kubernetes.io/tls"
    files = {}
    for field in ("ca.crt", "tls.crt", "tls.key"):
        files[field] = tmp_path / field
        files[field].write_bytes(base64.b64decode(secret["data"][field]))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(files["ca.crt"]), str(files["tls.crt"])],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(files["tls.crt"])],
                           capture_output=True, text=True, check=True).stdout
    assert "DNS:localmodel-webhook-server-service.kserve.svc" in names
    cert_key = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", str(files["tls.crt"])],
                              capture_output=True, text=True, check=True).stdout
    private_key = subprocess.run(["openssl", "pkey", "-pubout", "-in", str(files["tls.key"])],
                                 capture_output=True, text=True, check=True).stdout
    assert cert_key == private_key
    bundles = {hook["clientConfig"]["caBundle"] for configuration in _webhook_configurations(objects)
               for hook in configuration["webhooks"]}
    assert bundles == {secret["data"]["ca.crt"]}
    assert not [o for o in objects if o["kind"] in ("Certificate", "Issuer")]


def test_webhooks_with_a_manual_certificate(render_chart: Render) -> None:
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...").decode()
    objects = render_chart({"webhooks": {"enabled": True, "certificate": {"source": "manual",
                                                                          "caBundle": bundle}}})
    hooks = _only(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert {h["clientConfig"]["caBundle"] for h in hooks} == {bundle}
    assert not [o for o in objects if o["kind"] in ("Certificate", "Issuer", "Secret")]


@pytest.mark.parametrize(("webhooks", "message"), [
    ({"enabled": True, "certificate": {"source": "manual"}}, "webhooks.certificate.caBundle is required"),
    ({"enabled": True, "certificate": {"source": "vault"}}, "must be one of 'certManager', 'helm', 'manual'"),
    ({"validating": False, "pods": False, "inferenceServices": False}, "needs one of webhooks.validating"),
])
def test_bad_webhook_values_fail_with_a_reason(render_chart: Render, webhooks: dict[str, Any],
                                               message: str) -> None:
    with pytest.raises(manifests.HelmError, match=message):
        render_chart({"webhooks": webhooks})


@pytest.mark.parametrize(("values", "where"), [
    ({"webhook": {"enabled": True}}, "additional properties 'webhook' not allowed"),
    ({"agent": {"hostPath": "models"}}, "/agent/hostPath"),
    ({"agent": {"ports": {"metrics": 70000}}}, "/agent/ports/metrics"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
])
def test_values_schema_rejects_typos_and_nonsense(render_chart: Render, values: dict[str, Any],
                                                  where: str) -> None:
    with pytest.raises(manifests.HelmError, match=re.escape(where)):
        render_chart(values)


def test_controller_mounts_the_webhook_secret(render_chart: Render) -> None:
    objects = render_chart({"webhooks": {"enabled": True, "secretName": "my-cert",
                                         "certificate": {"source": "helm"}}})
    volumes = _only(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "cert")["secret"]["secretName"] == "my-cert"
    assert _only(objects, "Secret")["metadata"]["name"] == "my-cert"
