// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3), at the version
// k8s.io/kubernetes itself depends on, as the storage behind the local kube-apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
