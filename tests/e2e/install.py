"""A localmodel installation on a test control plane, from the shipped manifests.

What `kubectl apply -k deploy/` would create, minus what needs a kubelet: the CRDs (localmodel's
or KServe's), the namespaces, `inferenceservice-config`, both ServiceAccounts with their RBAC, the
agent's admission policy, and `deploy/controller/webhooks.yaml` with each `clientConfig.service`
turned into a URL of the controller process on 127.0.0.1. The controller and the agents run as
local processes authenticated with tokens of their own ServiceAccounts (TokenRequest), so every
call they make goes through the shipped RBAC rules.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from localmodel.dev.controller_process import ControllerProcess
from localmodel.dev.controlplane import ControlPlane
from tests.controller.harness import wait_for
from tests.reference import REPO, kserve_reference

NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"
CONTROLLER_ACCOUNT = "kserve-localmodel-controller-manager"
CRD_KINDS = ("localmodelcaches", "localmodelnamespacecaches", "localmodelnodegroups", "localmodelnodes")
CONSUMER_KINDS = ("inferenceservices", "llminferenceservices")


def crd_files(flavor: str) -> list[Path]:
    """localmodel's CRDs (`deploy/crds`) or KServe's, plus KServe's consumer CRDs either way."""
    reference = kserve_reference() / "crds"
    ours = REPO / "deploy" / "crds"
    folder = ours if flavor == "localmodel" else reference
    return [folder / f"serving.kserve.io_{kind}.yaml" for kind in CRD_KINDS] + [
        reference / f"serving.kserve.io_{kind}.yaml" for kind in CONSUMER_KINDS]


def apply(plane: ControlPlane, *paths: Path) -> None:
    args = ["apply", "--server-side", "--field-manager=localmodel-e2e"]
    for path in paths:
        args += ["-f", str(path)]
    plane.kubectl(*args)


def install(plane: ControlPlane, flavor: str) -> None:
    """CRDs, namespaces, config, ServiceAccounts, RBAC and the agent's admission policy."""
    apply(plane, *crd_files(flavor))
    # `kubectl wait` fails outright on a CRD whose status is not written yet: poll it
    wait_for(lambda: plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all",
                                   check=False).returncode == 0, "CRDs established")
    deploy = REPO / "deploy"
    apply(plane, deploy / "namespace.yaml")  # kserve and kserve-localmodel-jobs
    apply(plane, deploy / "config" / "inferenceservice-config.yaml",
          deploy / "controller" / "serviceaccount.yaml", deploy / "controller" / "rbac.yaml",
          deploy / "agent" / "serviceaccount.yaml", deploy / "agent" / "rbac.yaml",
          deploy / "agent" / "admission-policy.yaml")


def local_webhooks(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """deploy/controller/webhooks.yaml, every webhook pointed at https://127.0.0.1:port<path>."""
    documents = [d for d in yaml.safe_load_all((REPO / "deploy" / "controller" / "webhooks.yaml").read_text()) if d]
    bundle = base64.b64encode(ca_pem).decode()
    for document in documents:
        document["metadata"].pop("annotations", None)  # no cert-manager here: the CA is given
        for hook in document["webhooks"]:
            service = hook["clientConfig"]["service"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{service['path']}", "caBundle": bundle}
    return documents


def register_webhooks(plane: ControlPlane, port: int) -> None:
    plane.kubectl("apply", "--server-side", "--field-manager=localmodel-e2e", "-f", "-",
                  input=yaml.safe_dump_all(local_webhooks(port, plane.server_ca.cert_pem)))


def service_account_kubeconfig(plane: ControlPlane, client: Client, account: str, path: Path,
                               namespace: str = NAMESPACE) -> Path:
    """A kubeconfig with a TokenRequest token of `namespace/account` (no object binding)."""
    issued = client.create(ServiceAccount.Token(metadata=ObjectMeta(), spec=TokenRequestSpec(
        audiences=[], expirationSeconds=3600)), account, namespace=namespace)
    return plane.kubeconfig_for_token(str(issued.status.token), path=path)


def start_controller(plane: ControlPlane, kubeconfig: Path, workdir: Path, *extra: str) -> ControllerProcess:
    """`localmodel controller` as a child process with its webhooks on HTTPS (a serving
    certificate from the control plane's CA), started and listening."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert_dir = workdir / "certs"
    cert_dir.mkdir(exist_ok=True)
    pair = plane.server_ca.issue_serving_cert("webhook", ["127.0.0.1"], cert_dir)
    pair.cert_file.rename(cert_dir / "tls.crt")
    pair.key_file.rename(cert_dir / "tls.key")
    return ControllerProcess(kubeconfig, NAMESPACE, workdir / "controller.log", identity="e2e-controller",
                             webhook_cert_dir=cert_dir, args=extra).start()
