//go:build tools

// Package tools records the Kubernetes commands this module builds, so that
// go.mod and go.sum hold everything `go build` needs for them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
