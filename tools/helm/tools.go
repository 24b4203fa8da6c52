//go:build tools

// Package tools keeps helm in this module's go.mod/go.sum (`go mod tidy`
// honours build-tagged files). scripts/build-control-plane.sh builds it with
// `go build helm.sh/helm/v3/cmd/helm`.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
