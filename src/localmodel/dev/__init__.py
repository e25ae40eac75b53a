"""Developer tooling: a real local Kubernetes control plane and real nodes for tests and the demo.

- build.py         builds etcd, kube-apiserver, kubectl, kube-controller-manager from Go modules
- pki.py           CAs, serving and client certificates, the service-account signing key
- kubeconfig.py    writes self-contained kubeconfig files
- process.py       one child process with a log file, stopped by PID
- controlplane.py  ControlPlane: runs the components in a directory, restarts the apiserver
- nodebuild.py     builds kubelet, kube-scheduler, kube-proxy, containerd, runc, CNI plugins, pause
- oci.py           OCI image-layout archives from directories, `ctr images import`
- nodes.py         RealNodeCluster: real kubelets + containerd next to a ControlPlane
- commands.py      the `localmodel dev` click group (`localmodel dev cluster`)

Nothing here is used by the controller or the node agent at run time.
"""
