package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

// smallDiskSize is the tmpfs one replica keeps its data on: room for a
// run's Raft log and store, small enough to fill in a moment.
const smallDiskSize = "256m"

// mountSmallDisk puts replica r's data directory on a tmpfs of its own
// before it first starts (the disk-full fault fills it) and unmounts it
// when the test ends, after the replicas stopped.
func mountSmallDisk(t *testing.T, r *cluster.Replica) error {
	dir := filepath.Join(r.Dir, "data")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+smallDiskSize, "tmpfs", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount a tmpfs on %s: %w: %s", dir, err, out)
	}
	// Lazily: should a replica still run, it keeps its files until it exits.
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return nil
}

// diskFull fills the small-disk replica's tmpfs for a few seconds, leader
// or not, and stores a blob meanwhile, so that the replica has to write: a
// leader that cannot write its log steps down, a follower falls behind;
// either way it goes on serving what it holds from its own store and
// catches up once the space is back. Only a fill the replica hit (its
// status reports the failed write) counts as a disk-full fault.
func (s *suite) diskFull(ctx context.Context, rng *rand.Rand) error {
	v := s.smallDisk
	d := time.Duration(3000+rng.IntN(5000)) * time.Millisecond
	leader, err := s.leader(ctx)
	if err != nil {
		return err
	}
	held := s.held(ctx, v, rng)
	ballast, err := s.fillDisk()
	if err != nil {
		return err
	}
	s.n.diskFills.Add(1)
	role := ""
	if v == leader {
		role = " (leader)"
	}
	desc := fmt.Sprintf("disk full on %s%s for %v", s.c.Replicas[v].ID, role, d)
	s.event("%s: %d MiB ballast", desc, ballast>>20)
	fill := make([]byte, 4<<20)
	for i := range fill {
		fill[i] = byte(rng.Uint32())
	}
	members := s.memberList()
	via := members[rng.IntN(len(members))]
	path := fmt.Sprintf("ocirepository/chaos-disk/fill/rev-%d.tar.gz", s.n.diskFills.Load())
	putDone := make(chan struct{})
	go func() {
		defer close(putDone)
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := s.c.Put(pctx, via, path, bytes.NewReader(fill), int64(len(fill))); err != nil {
			s.putFailed(fmt.Sprintf("PUT %s while the disk is full: %v", path, err))
		}
	}()
	noticed := ""
	checks := 0
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := s.c.Status(sctx, v)
		cancel()
		if err == nil && noticed == "" && st.LogError+st.FSMError != "" {
			noticed = strings.TrimSpace(st.LogError + " " + st.FSMError)
			checks += s.checkHeld(ctx, v, held, desc)
		}
	}
	if noticed == "" {
		noticed = "no write failed"
	} else {
		s.n.ran[faultDiskFull].Add(1)
	}
	checks += s.checkHeld(ctx, v, held, desc)
	if checks == 0 {
		s.problem("%s: nothing to check: none of the %d artifacts held before the fill served or protected", desc, len(held))
	}
	if err := s.freeDisk(); err != nil {
		return err
	}
	<-putDone
	s.event("%s: space back; the replica reported %q", desc, noticed)
	return s.waitRecovered(ctx, v)
}

// checkHeld records a problem if replica v does not serve what it held
// and returns how many held artifacts it served.
func (s *suite) checkHeld(ctx context.Context, v int, held []artifactRec, desc string) int {
	checked, msg := s.servesHeld(ctx, v, held)
	if msg != "" {
		s.problem("%s: %s", desc, msg)
	}
	return checked
}

func (s *suite) ballastPath() string {
	return filepath.Join(s.c.Replicas[s.smallDisk].Dir, "data", "chaos-ballast")
}

// fillDisk allocates a file taking every free block of the small disk and
// returns its size.
func (s *suite) fillDisk() (int64, error) {
	path := s.ballastPath()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("fill the disk: %w", err)
	}
	defer f.Close()
	var size int64
	for chunk := int64(64 << 20); chunk >= 4<<10; {
		err := unix.Fallocate(int(f.Fd()), 0, size, chunk)
		switch {
		case err == nil:
			size += chunk
		case errors.Is(err, unix.ENOSPC):
			chunk /= 2
		default:
			_ = os.Remove(path)
			return 0, fmt.Errorf("fill the disk: fallocate %s: %w", path, err)
		}
	}
	return size, nil
}

// freeDisk removes the ballast, if any.
func (s *suite) freeDisk() error {
	if err := os.Remove(s.ballastPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("free the disk: %w", err)
	}
	return nil
}
