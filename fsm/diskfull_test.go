package fsm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// smallDisk mounts a tmpfs of size bytes, as a full volume's stand-in.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs and must run as root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

func resize(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("resize tmpfs: %v: %s", err, out)
	}
}

// applyAsync applies logs one by one in the background, as Raft's FSM
// goroutine does, and reports when all went through.
func applyAsync(t *testing.T, f *FSM, logs []*raft.Log) <-chan error {
	done := make(chan error, 1)
	go func() {
		for _, l := range logs {
			if res := f.Apply(l); res != nil {
				err, _ := res.(error)
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func waitFull(t *testing.T, f *FSM, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for f.Err() == nil {
		select {
		case err := <-done:
			t.Fatalf("applied everything on a full disk: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no error reported on a full disk")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(f.Err(), syscall.ENOSPC) || !strings.Contains(f.Err().Error(), "no space left on device") {
		t.Fatalf("Err on a full disk: %v", f.Err())
	}
}

// TestDiskFullDuringUpload fills the volume with an upload's chunks: apply
// stops at the chunk that does not fit, says so, loses nothing (what was
// stored is still served) and carries on once there is room, ending where
// a replica with room ends.
func TestDiskFullDuringUpload(t *testing.T) {
	dir := smallDisk(t, "3m")
	f := openAt(t, filepath.Join(dir, "fsm.db"))
	f.retryMin, f.retryMax = time.Millisecond, 20*time.Millisecond
	small := pattern(1, 100<<10)
	big := pattern(2, 6<<20)
	var logs []*raft.Log
	fd := &feeder{f: f}
	for _, c := range append(storeCmds(t, "u1", pathA, small), storeCmds(t, "u2", pathB, big)...) {
		logs = append(logs, fd.log(c))
	}
	ref := newFSM(t)
	for _, l := range logs {
		if res := ref.Apply(l); res != nil {
			t.Fatal(res)
		}
	}

	done := applyAsync(t, f, logs)
	waitFull(t, f, done)
	applied := f.AppliedIndex()
	if applied < 2 || applied >= uint64(len(logs)) {
		t.Fatalf("applied index %d of %d on a full disk", applied, len(logs))
	}
	wantArtifact(t, f, pathA, small)
	wantMissing(t, f, pathB)

	resize(t, dir, "64m")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f.Err() != nil {
		t.Fatalf("Err after space came back: %v", f.Err())
	}
	wantArtifact(t, f, pathB, big)
	checkInvariants(t, f)
	if contentHash(t, f) != contentHash(t, ref) {
		t.Fatal("the replica that ran out of space differs from one that did not")
	}
}

// TestDiskFullDuringCommit leaves no room for the commit's transaction (a
// commit itself needs none for the blob: the link and the hash take no
// space, so this one carries half a MiB of metadata, which bbolt must
// grow its file for): the commit is retried, not skipped, and lands once
// room is made.
func TestDiskFullDuringCommit(t *testing.T) {
	dir := smallDisk(t, "16m")
	f := openAt(t, filepath.Join(dir, "fsm.db"))
	f.retryMin, f.retryMax = time.Millisecond, 20*time.Millisecond
	content := pattern(3, 2<<20)
	cmds := chunkCmds("u1", content)
	a := artifactAt(t, pathA, content)
	a.Metadata = map[string]string{"big": strings.Repeat("m", 512<<10)}
	cmds = append(cmds, EncodeCommit(Commit{UploadID: "u1", Chunks: uint32(len(cmds)), Artifact: a}))
	fd := &feeder{f: f}
	fd.ok(t, cmds[:len(cmds)-1]...)
	// Fill what is left.
	filler := filepath.Join(dir, "filler")
	fh, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := fh.Write(buf); err != nil {
			break
		}
	}
	fh.Close()
	done := applyAsync(t, f, []*raft.Log{fd.log(cmds[len(cmds)-1])})
	waitFull(t, f, done)
	wantMissing(t, f, pathA)
	wantUploads(t, f, Upload{ID: "u1", StartedAt: testTime.UnixNano(), Chunks: 4, Bytes: 2 << 20})

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f.Err() != nil {
		t.Fatalf("Err after space came back: %v", f.Err())
	}
	wantArtifact(t, f, pathA, content)
	wantUploads(t, f)
	checkInvariants(t, f)
}
