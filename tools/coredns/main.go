// Command coredns is CoreDNS with its standard plugin list, built from the
// pinned github.com/coredns/coredns module for Distillery's real test node
// (it serves cluster.local from the tests' API server). The same two lines as
// upstream's coredns.go; see scripts/build-control-plane.sh.
package main

import (
	_ "github.com/coredns/coredns/core/plugin" // the standard plugin list (plugin.cfg)
	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
