// Command kubectl is the upstream kubectl, built from Go modules at the same version as the API
// server, so tests and the README can run `kubectl --kubeconfig DIR/kubeconfig ...`.
// Same body as k8s.io/kubernetes/cmd/kubectl/kubectl.go.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // exec and OIDC credential plugins, as upstream
)

func main() {
	// Verbosity must be known before flag parsing: command construction already logs.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
