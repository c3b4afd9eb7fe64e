// Package raftstore owns the replica's Raft node: the mutual-TLS transport,
// bootstrap of the peer set, the log, stable and snapshot stores, leadership
// events, and the replicated implementation of storage.Storage on top of
// the fsm package. It knows nothing about source kinds. DESIGN.md in this
// directory explains the choices.
package raftstore
