package fsm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/hashicorp/raft"
)

// crashLogs upload, commit, deduplicate, release and delete blobs, so
// every fault point is passed more than once.
func crashLogs(t testing.TB) []*raft.Log {
	var cmds [][]byte
	a, b := pattern(1, 5000), pattern(2, 2500)
	cmds = append(cmds, storeCmds(t, "u1", pathA, a, 2000)...)
	cmds = append(cmds, storeCmds(t, "u2", pathB, a, 1000)...) // same content: one blob, two references
	cmds = append(cmds, EncodeDeleteArtifacts([]string{pathA}))
	cmds = append(cmds, storeCmds(t, "u3", pathB, b, 1000)...) // replaces: a's blob goes
	cmds = append(cmds, chunkCmds("u4", a, 2000)[:2]...)       // left in flight
	cmds = append(cmds, storeCmds(t, "u5", "helmchart/default/x/x-1.0.0.tgz", b, 700)...)
	logs := make([]*raft.Log, len(cmds))
	for i, c := range cmds {
		logs[i] = &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: c}
	}
	return logs
}

// applyInBatches applies logs three at a time, as Raft hands them over.
func applyInBatches(t testing.TB, f *FSM, logs []*raft.Log) {
	for i := 0; i < len(logs); i += 3 {
		for _, res := range f.ApplyBatch(logs[i:min(i+3, len(logs))]) {
			if res != nil {
				t.Fatalf("apply: %v", res)
			}
		}
	}
}

// TestCrashChild is the process TestCrashAtEveryStep kills: it applies the
// crash logs to the store in FSM_CRASH_DIR and exits at the FSM_CRASH_HIT-th
// time apply reaches FSM_CRASH_AT, as a SIGKILL there would stop it.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("FSM_CRASH_DIR")
	if dir == "" {
		return // only as a child of TestCrashAtEveryStep
	}
	at := os.Getenv("FSM_CRASH_AT")
	hit, _ := strconv.Atoi(os.Getenv("FSM_CRASH_HIT"))
	f, err := Open(filepath.Join(dir, "fsm.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	f.fault = func(p string) {
		if p == at {
			if seen++; seen == hit {
				os.Exit(3)
			}
		}
	}
	applyInBatches(t, f, crashLogs(t))
	os.Exit(0) // the fault point was never reached
}

// TestCrashAtEveryStep kills a process applying the log at each step of an
// upload, a commit and a release (chunk written; upload file verified and
// synced before and after its link to the content address; after the
// bbolt commit before and after the unlinks), then opens its store and
// replays the whole log as Raft would after a restart: the state must be
// that of a replica that never crashed.
func TestCrashAtEveryStep(t *testing.T) {
	logs := crashLogs(t)
	ref := newFSM(t)
	applyInBatches(t, ref, logs)
	want := contentHash(t, ref)
	// How often the logs pass each point: two blobs are linked, one released.
	for at, hits := range map[string]int{faultChunkWritten: 3, faultBeforeLink: 2, faultAfterLink: 2, faultAfterCommit: 3, faultBeforeRelease: 1, faultAfterCleanup: 3} {
		for hit := 1; hit <= hits; hit++ {
			t.Run(fmt.Sprintf("%s/%d", at, hit), func(t *testing.T) {
				dir := t.TempDir()
				cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
				cmd.Env = append(os.Environ(), "FSM_CRASH_DIR="+dir, "FSM_CRASH_AT="+at, "FSM_CRASH_HIT="+strconv.Itoa(hit))
				out, err := cmd.CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 3 {
					t.Fatalf("child did not stop at %s #%d: %v\n%s", at, hit, err, out)
				}
				f := openAt(t, filepath.Join(dir, "fsm.db"))
				applyInBatches(t, f, logs)
				if got := contentHash(t, f); got != want {
					t.Fatalf("content hash after crash and replay %s, want %s", got, want)
				}
				checkInvariants(t, f)
				wantArtifact(t, f, pathB, pattern(2, 2500))
				wantUploads(t, f, Upload{ID: "u4", StartedAt: testTime.UnixNano(), Chunks: 2, Bytes: 4000})
			})
		}
	}
}
