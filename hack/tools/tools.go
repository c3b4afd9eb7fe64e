//go:build tools

// Package tools records the commands this module builds, so that
// `go mod tidy` run here keeps their requirements.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
