package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

// diskArgs make the disk phase's cluster collect every superseded
// artifact at once, so "after GC" comes within a second or two.
var diskArgs = []string{"--artifact-retention-records=1", "--gc-interval=1s"}

const (
	diskFillerSize = 8 * mib
	// diskMaxFillers bounds the filler stores waiting for a snapshot: 320
	// MiB of log, more than the snapshot trigger of these stores.
	diskMaxFillers = 40
)

// disk measures what a replica's volume holds against the artifact bytes
// it serves, in the steady state after garbage collection and a
// snapshot: 100 MiB of one source and four 40 MiB revisions of another
// (three of them collected), then small revisions of a third source until
// a snapshot is taken after the collection, the last of those collected too.
func (b *bench) disk(ctx context.Context, c *cluster.Cluster) error {
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	store := func(path string, size int, seed uint64) error {
		content := randomContent(seed, size)
		pctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		res, err := c.Put(pctx, leader, path, bytes.NewReader(content), int64(size))
		if err != nil {
			return fmt.Errorf("store %s: %w", path, err)
		}
		if res.Digest != digest(content) {
			return fmt.Errorf("store %s: digest %s, want %s", path, res.Digest, digest(content))
		}
		return nil
	}
	seed := b.cfg.seed*1000 + 300
	if err := store("gitrepository/bench/disk-b/artifact.tar.gz", 100*mib, seed); err != nil {
		return err
	}
	for r := range 4 {
		if err := store(fmt.Sprintf("gitrepository/bench/disk-a/rev-%d.tar.gz", r), 40*mib, seed+1+uint64(r)); err != nil {
			return err
		}
	}
	gcIndex, err := waitArtifacts(ctx, c, leader, 2)
	if err != nil {
		return err
	}
	f, err := follower(c, leader)
	if err != nil {
		return err
	}
	dataDir := filepath.Join(c.Replicas[f].Dir, "data")
	fillers := 0
	for {
		idx, err := newestSnapshotIndex(dataDir)
		if err != nil {
			return err
		}
		if idx >= gcIndex {
			break
		}
		if fillers == diskMaxFillers {
			return fmt.Errorf("no snapshot after index %d on %s after %d filler stores (newest at %d)", gcIndex, c.Replicas[f].ID, fillers, idx)
		}
		if err := store(fmt.Sprintf("gitrepository/bench/disk-c/rev-%d.tar.gz", fillers), diskFillerSize, seed+10+uint64(fillers)); err != nil {
			return err
		}
		fillers++
		// The snapshot check runs every second.
		if err := sleep(ctx, 1500*time.Millisecond); err != nil {
			return err
		}
	}
	if _, err := waitArtifacts(ctx, c, leader, 3); err != nil {
		return err
	}
	if err := waitAllApplied(ctx, c, leader, 60*time.Second); err != nil {
		return err
	}
	// The snapshot is listed as soon as its directory is renamed into
	// place; raft compacts the log and the stores free files after that.
	if err := sleep(ctx, settleTime); err != nil {
		return err
	}
	st, err := c.Status(ctx, f)
	if err != nil {
		return err
	}
	used, parts, err := diskUsage(dataDir)
	if err != nil {
		return err
	}
	if st.Bytes <= 0 {
		return fmt.Errorf("%s reports %d live artifact bytes", c.Replicas[f].ID, st.Bytes)
	}
	ratio := float64(used) / float64(st.Bytes)
	b.res.set("disk_per_replica_ratio", round(ratio, 3))
	b.res.set("disk_replica_mib", toMiB(used))
	b.res.set("disk_live_artifact_mib", toMiB(st.Bytes))
	b.res.set("disk_live_artifacts", st.Artifacts)
	b.res.set("disk_filler_stores", fillers)
	breakdown := map[string]float64{}
	for k, v := range parts {
		breakdown[k] = toMiB(v)
	}
	b.res.set("disk_replica_breakdown_mib", breakdown)
	names := make([]string, 0, len(parts))
	for k := range parts {
		names = append(names, k)
	}
	sort.Strings(names)
	var desc bytes.Buffer
	for _, k := range names {
		fmt.Fprintf(&desc, " %s %.1f", k, toMiB(parts[k]))
	}
	b.res.detail("disk on "+c.Replicas[f].ID, "%.1f MiB for %.1f MiB of %d live artifacts (MiB:%s)",
		toMiB(used), toMiB(st.Bytes), st.Artifacts, desc.String())
	return nil
}

// waitArtifacts waits until the leader holds exactly want artifacts (the
// collector has run) and returns its commit index then.
func waitArtifacts(ctx context.Context, c *cluster.Cluster, leader, want int) (uint64, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.Status(ctx, leader)
		if err != nil {
			return 0, err
		}
		if st.Artifacts == want && st.Uploads == 0 {
			return st.CommitIndex, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("leader holds %d artifacts, want %d after garbage collection", st.Artifacts, want)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// newestSnapshotIndex reads the index of the newest snapshot in a
// replica's snapshot store, raft/snapshots/<id>/meta.json; 0 if none.
func newestSnapshotIndex(dataDir string) (uint64, error) {
	metas, err := filepath.Glob(filepath.Join(dataDir, "raft", "snapshots", "*", "meta.json"))
	if err != nil {
		return 0, err
	}
	var newest uint64
	for _, m := range metas {
		data, err := os.ReadFile(m)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by retention meanwhile
		}
		if err != nil {
			return 0, err
		}
		var meta struct{ Index uint64 }
		if err := json.Unmarshal(data, &meta); err != nil {
			return 0, fmt.Errorf("%s: %w", m, err)
		}
		newest = max(newest, meta.Index)
	}
	return newest, nil
}

// diskUsage is the space allocated to the files under dir, each inode
// counted once however many links it has, in total and per top-level entry.
func diskUsage(dir string) (int64, map[string]int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	parts := map[string]int64{}
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat_t", path)
		}
		id := inode{uint64(st.Dev), st.Ino}
		if seen[id] {
			return nil
		}
		seen[id] = true
		// raft/ holds the log, the stable store and the snapshots: one
		// level deeper tells them apart.
		rel, _ := filepath.Rel(dir, path)
		parts3 := strings.SplitN(filepath.ToSlash(rel), "/", 3)
		top := parts3[0]
		if top == "raft" && len(parts3) > 1 {
			top += "/" + parts3[1]
		}
		used := st.Blocks * 512
		total += used
		parts[top] += used
		return nil
	})
	return total, parts, err
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
