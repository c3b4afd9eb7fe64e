// Package httpapi owns the HTTP listeners of a replica: artifact serving
// in Flux's URL layout, health and readiness probes, Prometheus metrics and
// the bearer-token internal API. It never writes state except through
// Backend; a replica that lacks an artifact or is not the leader forwards
// to a peer rather than answering from anywhere else.
package httpapi
