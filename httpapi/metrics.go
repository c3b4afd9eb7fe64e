package httpapi

import (
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sourceraft/sourceraft/metrics"
)

// NewMetricsServer serves /metrics from metrics.Registry and, with
// profiles, Go's runtime profiles under /debug/pprof/: what a goroutine
// dump of a stuck replica is taken from.
func NewMetricsServer(profiles bool) *echo.Echo {
	e := newEcho(plainErrorHandler)
	e.Use(countRequests("metrics"))
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{})))
	if profiles {
		e.GET("/debug/pprof/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
		e.GET("/debug/pprof/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
		// Index also serves each named profile: goroutine, heap, block...
		e.GET("/debug/pprof/*", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
	}
	return e
}

// Label values come from clients, so methods and kinds are folded into a
// fixed set: an arbitrary method or kind must not create a new series.
var methodLabels = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "other"}

func methodIndex(m string) int {
	switch m {
	case http.MethodGet:
		return 0
	case http.MethodHead:
		return 1
	case http.MethodPost:
		return 2
	case http.MethodPut:
		return 3
	case http.MethodDelete:
		return 4
	}
	return 5
}

var kindLabels = [...]string{"gitrepository", "helmrepository", "helmchart", "ocirepository", "bucket", "other"}

func kindIndex(k string) int {
	for i, l := range kindLabels[:len(kindLabels)-1] {
		if k == l {
			return i
		}
	}
	return len(kindLabels) - 1
}

const minCode, maxCode = 100, 599

// codeCache keeps the child collector of each (row, status code) so the
// artifact hot path does not hash label values and format the code on
// every request.
type codeCache[T any] struct {
	slots []atomic.Pointer[T]
}

func newCodeCache[T any](rows int) *codeCache[T] {
	return &codeCache[T]{slots: make([]atomic.Pointer[T], rows*(maxCode-minCode+1))}
}

func (c *codeCache[T]) slot(row, code int) *atomic.Pointer[T] {
	if code < minCode || code > maxCode {
		return nil
	}
	return &c.slots[row*(maxCode-minCode+1)+code-minCode]
}

type requestCounter struct {
	listener string
	cache    *codeCache[prometheus.Counter]
}

// countRequests is the per-listener middleware behind
// metrics.HTTPRequests and metrics.HTTPRequestErrors. It renders handler
// errors itself so the status it records is the one sent.
func countRequests(listener string) echo.MiddlewareFunc {
	rc := &requestCounter{listener: listener, cache: newCodeCache[prometheus.Counter](len(methodLabels))}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			// Deferred so that a download aborted by panic is still counted.
			defer rc.observe(c)
			if err := next(c); err != nil {
				c.Error(err)
			}
			return nil
		}
	}
}

func (rc *requestCounter) observe(c echo.Context) {
	mi := methodIndex(c.Request().Method)
	code := c.Response().Status
	s := rc.cache.slot(mi, code)
	var ctr prometheus.Counter
	if s != nil {
		if p := s.Load(); p != nil {
			ctr = *p
		}
	}
	if ctr == nil {
		ctr = metrics.HTTPRequests.WithLabelValues(rc.listener, methodLabels[mi], strconv.Itoa(code))
		if s != nil {
			cached := ctr // a separate variable keeps ctr itself off the heap
			s.Store(&cached)
		}
	}
	ctr.Inc()
	if code >= 500 {
		countError(rc.listener, c.Request().Method)
	}
}

func countError(listener, method string) {
	metrics.HTTPRequestErrors.WithLabelValues(listener, methodLabels[methodIndex(method)]).Inc()
}

var serveDurations = newCodeCache[prometheus.Observer](len(kindLabels))

func observeServe(kind string, code int, seconds float64) {
	ki := kindIndex(kind)
	s := serveDurations.slot(ki, code)
	var o prometheus.Observer
	if s != nil {
		if p := s.Load(); p != nil {
			o = *p
		}
	}
	if o == nil {
		o = metrics.ArtifactServeDuration.WithLabelValues(kindLabels[ki], strconv.Itoa(code))
		if s != nil {
			cached := o
			s.Store(&cached)
		}
	}
	o.Observe(seconds)
}
