package chaos

import (
	"strings"
	"testing"
)

// TestParseFaults runs without a cluster: CHAOS_FAULTS either names the
// kinds to inject or is refused, never silently a run without faults.
func TestParseFaults(t *testing.T) {
	for v, want := range map[string]string{
		"":                "kill pause partition disk rolling",
		"kill":            "kill",
		"partition,,disk": "partition disk",
		" pause , kill ":  "kill pause",
	} {
		on, err := parseFaults(v)
		if err != nil {
			t.Errorf("CHAOS_FAULTS=%q: %v", v, err)
			continue
		}
		var got []string
		for f := range numFaults {
			if on[f] {
				got = append(got, faultNames[f])
			}
		}
		if strings.Join(got, " ") != want {
			t.Errorf("CHAOS_FAULTS=%q enables %v, want %s", v, got, want)
		}
	}
	for _, v := range []string{",", " , ", "kill,bogus"} {
		if _, err := parseFaults(v); err == nil {
			t.Errorf("CHAOS_FAULTS=%q accepted", v)
		}
	}
}
