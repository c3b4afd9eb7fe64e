// Package metrics owns the Prometheus collectors shared by the store and the
// HTTP layer, registered on one registry that the metrics listener serves.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry is what the metrics listener serves.
var Registry = prometheus.NewRegistry()

var (
	// ArtifactServeDuration observes artifact downloads by status code class.
	ArtifactServeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "source_controller_artifact_serve_duration_seconds",
		Help:    "Time to serve an artifact download.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"kind", "code"})
	// HTTPRequests counts requests per listener, method and status code.
	HTTPRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_http_requests_total",
		Help: "HTTP requests handled.",
	}, []string{"listener", "method", "code"})
	// HTTPRequestErrors counts requests answered with a 5xx or aborted mid-body.
	HTTPRequestErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_http_request_errors_total",
		Help: "HTTP requests that failed on the server side.",
	}, []string{"listener", "method"})
	// StorageOperations counts storage operations by outcome.
	StorageOperations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_storage_operations_total",
		Help: "Storage operations by kind and outcome.",
	}, []string{"operation", "outcome"})
	// StorageOperationDuration observes storage operation latency.
	StorageOperationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "source_controller_storage_operation_duration_seconds",
		Help:    "Storage operation latency.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"operation"})
	// ReconcileDuration observes source reconciliations per object, as
	// Flux's controllers do (the name and labels are theirs, so Flux
	// dashboards and alerts work unchanged).
	ReconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gotk_reconcile_duration_seconds",
		Help:    "The duration in seconds of a GitOps Toolkit resource reconciliation.",
		Buckets: prometheus.ExponentialBucketsRange(10e-3, 1800, 10),
	}, []string{"kind", "name", "namespace"})
	// BlobChecks counts blob files hashed against their digest (on their
	// first download by this process, or by the scrub) by result:
	// verified, corrupt (never served complete), repaired (from a peer).
	BlobChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_blob_checks_total",
		Help: "Blob files checked against their digest, by result.",
	}, []string{"result"})
	// UploadsAborted counts stores aborted through Raft instead of
	// committed, by reason: incomplete (content ended early or short of its
	// declared length), too_large, digest_mismatch, not_leader, canceled, other.
	UploadsAborted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_uploads_aborted_total",
		Help: "Artifact uploads aborted instead of committed, by reason.",
	}, []string{"reason"})
	// HTTPConnections is the connections open per listener.
	HTTPConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "source_controller_http_connections_open",
		Help: "HTTP connections open, per listener.",
	}, []string{"listener"})
	// HTTPLimited counts what the serving limits refused or cut, per
	// listener and limit: max_connections (answered 503), write_idle_timeout
	// and read_idle_timeout (connection or body cut), max_ranges (Range
	// ignored), empty_suffix_range (Range ignored), unknown_method (answered 501).
	HTTPLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_http_limited_total",
		Help: "Requests and connections refused or cut by a serving limit.",
	}, []string{"listener", "limit"})
	// StorageBackend is 1 for the blob backend in use.
	StorageBackend = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "source_controller_storage_backend",
		Help: "The artifact blob backend in use (value 1).",
	}, []string{"backend"})
)

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		ArtifactServeDuration, HTTPRequests, HTTPRequestErrors,
		StorageOperations, StorageOperationDuration, StorageBackend,
		ReconcileDuration, BlobChecks, UploadsAborted, HTTPConnections, HTTPLimited,
	)
	for _, r := range []string{"verified", "corrupt", "repaired"} {
		BlobChecks.WithLabelValues(r) // present at 0 from the start
	}
}

// ObserveStorage records one storage operation that started at start.
func ObserveStorage(op string, start time.Time, err error) {
	outcome := "success"
	if err != nil {
		outcome = "error"
	}
	StorageOperations.WithLabelValues(op, outcome).Inc()
	StorageOperationDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}
