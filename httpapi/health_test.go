package httpapi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/clusterapi"
)

func TestHealth(t *testing.T) {
	n := startNode(t, "a", nil)
	resp, body := do(t, http.MethodGet, "http://"+n.health+"/healthz", nil, nil)
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
	n.b.setReady(errors.New("applied index 3 trails commit index 90"))
	resp, body = do(t, http.MethodGet, "http://"+n.health+"/readyz", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "trails commit index") {
		t.Errorf("readyz not ready: %d %q", resp.StatusCode, body)
	}
	n.b.setReady(nil)
	resp, _ = do(t, http.MethodGet, "http://"+n.health+"/readyz", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz ready: %d", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	n := startNode(t, "a", nil)
	n.b.put(artPath, []byte("x"))
	n.b.put("helmchart/ns/c/c-1.0.0.tgz", randomBytes(10, 30))
	n.b.corrupt("helmchart/ns/c/c-1.0.0.tgz", 3)
	do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil)
	do(t, http.MethodGet, "http://"+n.artifact+"/helmchart/ns/c/c-1.0.0.tgz", nil, nil)
	do(t, http.MethodGet, "http://"+n.health+"/healthz", nil, nil)
	do(t, http.MethodGet, "http://"+n.api+clusterapi.ClusterPath, nil, bearer)

	resp, body := do(t, http.MethodGet, "http://"+n.metrics+"/metrics", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		`source_controller_http_requests_total{code="200",listener="artifacts",method="GET"}`,
		`source_controller_http_requests_total{code="200",listener="health",method="GET"}`,
		`source_controller_http_requests_total{code="200",listener="api",method="GET"}`,
		`source_controller_http_request_errors_total{listener="artifacts",method="GET"}`,
		`source_controller_artifact_serve_duration_seconds_count{code="200",kind="gitrepository"}`,
		`source_controller_artifact_serve_duration_seconds_count{code="500",kind="helmchart"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestMetricsServesGoroutineProfileWhenAsked(t *testing.T) {
	n := startNode(t, "a", nil)
	resp, body := do(t, http.MethodGet, "http://"+n.metrics+"/debug/pprof/goroutine?debug=2", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine ") {
		t.Fatalf("goroutine profile: %d %.200s", resp.StatusCode, body)
	}
	off := httptest.NewServer(NewMetricsServer(false))
	defer off.Close()
	resp, _ = do(t, http.MethodGet, off.URL+"/debug/pprof/goroutine", nil, nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("profiles served without being asked for: %d", resp.StatusCode)
	}
}
