// Package clusterapi owns the replicas' internal API as a protocol: its
// route paths, the JSON wire types the routes carry (Status, Peer,
// ContentHash, PutResult) and the one Client that replicas (raftstore's
// registration and membership checks) and the test harness use to call
// it. httpapi serves these routes on these paths; nobody else builds
// internal API URLs or auth headers.
//
// The wire types are what replicas of different versions exchange during
// a rolling upgrade: their JSON field names may gain fields but never
// change.
package clusterapi
