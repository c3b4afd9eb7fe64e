package helm

import (
	"testing"
)

// FuzzLoadIndex parses hostile index files: whatever the chart-by-chart
// reader makes of them must be what Helm's loader makes of them, the
// stored form byte for byte and every lookup (see sameAsHelm).
func FuzzLoadIndex(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: 1.0.0\n    urls: [app-1.0.0.tgz]\n"))
	f.Add([]byte("apiVersion: v1\nentries: {}\n"))
	f.Add([]byte("{\"apiVersion\":\"v1\",\"entries\":{\"a\":[{\"name\":\"a\",\"version\":\"not-semver\"}]}}"))
	f.Add([]byte("apiVersion: v1\nentries:\n  a: &x [*x]\n"))
	f.Add([]byte("entries: [1, 2"))
	f.Add([]byte(helmIndexYAML))
	f.Fuzz(func(t *testing.T, data []byte) {
		sameAsHelm(t, data)
	})
}
