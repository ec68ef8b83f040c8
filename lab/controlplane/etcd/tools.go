//go:build tools

// Package tools records the etcd commands this module builds, so that go.mod
// and go.sum hold everything `go build` needs for them.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
