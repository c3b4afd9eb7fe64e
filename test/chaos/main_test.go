// Package chaos runs the real source-controller as a replicated cluster
// reconciling GitRepositories from a real API server and Git server, while
// a seeded fault loop kills, pauses, partitions, fills the disk of and
// restarts replicas under download and upload load; then it heals the
// cluster and verifies the invariants: no download failed on every
// replica, no digest mismatched, no committed artifact disappeared before
// retention allowed it, at most one leader per term, every replica's store
// equal, and reconciliation resumed within 5 s of a new leader after the
// old one was killed or cut off. A run that did too little to prove them
// fails too: every enabled kind of fault must have taken effect, the
// leader must have been hit, the scaling must have been seen in the Raft
// configuration, and the consumers and the final check must have checked
// enough digests.
//
// The shape follows hashicorp/raft's fuzzy tests: start cluster →
// background load → fault loop → heal → stop → verify. `make chaos` runs it
// for CHAOS_DURATION (default 3m, counted from the end of setup) per
// cluster size; `make chaos-short` runs a 60 s round of the 3-replica
// cluster. CHAOS_FAULTS (e.g. "partition,kill") limits the kinds of fault,
// CHAOS_SEED replays a fault sequence, CHAOS_OUT names where a failure's
// logs and states are dumped.
package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sourceraft/sourceraft/internal/testenv"
)

var (
	binary string
	env    *testenv.Env
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("CHAOS_DURATION") == "" {
		return m.Run() // every test skips: nothing to build or start
	}
	binary = os.Getenv("SOURCERAFT_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "sourceraft-chaos-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "source-controller")
		build := exec.Command("go", "build", "-o", binary, "../../cmd/source-controller")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build source-controller:", err)
			return 1
		}
	}
	var err error
	if env, err = testenv.StartEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	return m.Run()
}
