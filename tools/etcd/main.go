// Command etcd is a wrapper around go.etcd.io/etcd/server/v3/etcdmain, pinned
// to the etcd release Kubernetes v1.34 uses. go.etcd.io/etcd/server/v3 has
// relative replace lines, so `go install go.etcd.io/etcd/server/v3@...` fails;
// building this module works. See scripts/build-control-plane.sh.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
