package metrics

import "github.com/prometheus/client_golang/prometheus"

// The S3 blob backend's read cache (package s3store).
var (
	S3CacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "source_controller_s3_cache_requests_total",
		Help: "Reads of blobs in the S3 bucket, by whether the local cache held them.",
	}, []string{"result"})
	S3CacheBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "source_controller_s3_cache_bytes",
		Help: "Bytes held by the local cache of S3 blobs.",
	})
)

func init() {
	Registry.MustRegister(S3CacheRequests, S3CacheBytes)
	for _, r := range []string{"hit", "miss"} {
		S3CacheRequests.WithLabelValues(r)
	}
}
