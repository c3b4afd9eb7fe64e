//go:build tools

// Package tools records the command this module builds, so that `go mod tidy`
// run here keeps its requirements. The build tag keeps it out of every build:
// a main package cannot be imported for real.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
