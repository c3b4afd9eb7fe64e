// Command etcd is the upstream etcd server, built here only because envtest
// needs an etcd binary and release tarballs cannot be downloaded.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
