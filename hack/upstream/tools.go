//go:build tools

// Package tools records the command this module builds, so that
// `go mod tidy` run here keeps its requirements.
package tools

import _ "github.com/fluxcd/source-controller"
