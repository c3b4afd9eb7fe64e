package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/metrics"
)

// TestEveryMethodIsAnsweredAndCounted: a method no route allows is
// answered 405, one this server does not know 501, by every listener,
// and each lands in source_controller_http_requests_total.
func TestEveryMethodIsAnsweredAndCounted(t *testing.T) {
	n := startNode(t, "a", nil)
	for _, l := range []struct{ listener, addr, path string }{
		{"artifacts", n.artifact, "/" + artPath},
		{"health", n.health, "/healthz"},
		{"metrics", n.metrics, "/metrics"},
		{"api", n.api, clusterapi.ClusterPath},
	} {
		for _, c := range []struct {
			method string
			code   int
		}{{"FOO", 501}, {"PROPFIND", 501}, {"A-B", 501}, {"PATCH", 405}, {"TRACE", 405}} {
			series := metrics.HTTPRequests.WithLabelValues(l.listener, methodLabels[methodIndex(c.method)], strconv.Itoa(c.code))
			before := counterValue(t, series)
			resp, body := do(t, c.method, "http://"+l.addr+l.path, strings.NewReader(""), bearer)
			if resp.StatusCode != c.code {
				t.Errorf("%s %s on %s: %d %s, want %d", c.method, l.path, l.listener, resp.StatusCode, body, c.code)
			}
			if c.code == http.StatusMethodNotAllowed && resp.Header.Get("Allow") == "" {
				t.Errorf("%s %s on %s: 405 without Allow", c.method, l.path, l.listener)
			}
			if got := counterValue(t, series) - before; got != 1 {
				t.Errorf("%s %s on %s: counted %v times, want 1", c.method, l.path, l.listener, got)
			}
		}
	}
}
