package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

const replicateSize = 100 * mib

// settleTime is how long after the slowest replica applied a store its
// writes are still counted: the snapshot check runs every second, and a
// snapshot the store triggered is part of what it cost.
const settleTime = 2 * time.Second

// replicate times a 3-replica Store of 100 MiB against two baselines on
// the filesystem that holds the replicas' data: one local write+fsync of
// the same bytes, and the floor of three replicas on one disk (three
// concurrent writers, each writing the bytes twice, as log and as blob,
// with one fsync per copy).
func (b *bench) replicate(ctx context.Context, c *cluster.Cluster) error {
	var local, floor, store, allApplied, followerWchar, followerWrites, amplification []float64
	for run := range b.cfg.rounds {
		// Fresh content per run: identical digests are stored once, and a
		// store must not get cheaper by deduplication.
		content := randomContent(b.cfg.seed*1000+100+uint64(run), replicateSize)

		d, err := localWrite(filepath.Join(b.root, fmt.Sprintf("local-write-%d.bin", run)), content)
		if err != nil {
			return err
		}
		local = append(local, d.Seconds())
		d, err = floorWrite(filepath.Join(b.root, fmt.Sprintf("floor-%d", run)), content)
		if err != nil {
			return err
		}
		floor = append(floor, d.Seconds())

		leader, err := c.WaitLeader(ctx)
		if err != nil {
			return err
		}
		path := fmt.Sprintf("gitrepository/bench/replicate-%d/artifact.tar.gz", run)
		pids := map[int]int{}
		io0 := map[int]procIO{}
		for i := range c.Replicas {
			if pid := c.PID(i); pid != 0 {
				pids[i], io0[i] = pid, readProcIO(pid)
			}
		}
		wait := func() {}
		if run == 0 {
			// Longer than the store; the profile's tail is the idle leader.
			wait = b.cpuProfile(ctx, c.Replicas[leader].MetricsAddr, "replicate-leader-cpu", 3*time.Second)
		}
		pctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		start := time.Now()
		res, err := c.Put(pctx, leader, path, bytes.NewReader(content), int64(len(content)))
		d = time.Since(start)
		cancel()
		if err != nil {
			return fmt.Errorf("store %s: %w", path, err)
		}
		if want := digest(content); res.Digest != want {
			return fmt.Errorf("store %s: digest %s, want %s", path, res.Digest, want)
		}
		store = append(store, d.Seconds())

		// Not part of the ratio: how long until the slowest replica has it
		// too. The next run starts only then, so runs do not overlap.
		if err := waitAllApplied(ctx, c, leader, 120*time.Second); err != nil {
			return err
		}
		allApplied = append(allApplied, time.Since(start).Seconds())
		wait()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(settleTime):
		}
		// A follower's writes are almost all its own storage (a leader's
		// wchar also holds what it sends to the followers), so the largest
		// follower's figures show the write amplification per replica.
		var fw procIO
		for i, pid := range pids {
			if i == leader {
				continue
			}
			now := readProcIO(pid)
			fw.wchar = max(fw.wchar, now.wchar-io0[i].wchar)
			fw.writeBytes = max(fw.writeBytes, now.writeBytes-io0[i].writeBytes)
		}
		followerWchar = append(followerWchar, float64(fw.wchar)/mib)
		followerWrites = append(followerWrites, float64(fw.writeBytes)/mib)
		amplification = append(amplification, float64(fw.writeBytes)/float64(len(content)))
		fmt.Fprintf(os.Stderr, "   run %d: local write+fsync %.3fs, floor %.3fs, store %.3fs, all replicas applied %.3fs, follower wrote %.0f MiB\n",
			run+1, local[run], floor[run], store[run], allApplied[run], followerWrites[run])
	}
	lm, fm, sm := median(local), median(floor), median(store)
	b.res.set("replicate_100mib_ratio_vs_local_write", round(sm/lm, 3))
	b.res.set("replicate_100mib_ratio_vs_floor", round(sm/fm, 3))
	b.res.set("replicate_100mib_floor_seconds", round(fm, 3))
	b.res.set("replicate_100mib_floor_runs_seconds", roundAll(floor, 3))
	b.res.set("follower_write_amplification", round(median(amplification), 3))
	b.res.set("follower_write_amplification_runs", roundAll(amplification, 3))
	b.res.set("replicate_100mib_store_seconds", round(sm, 3))
	b.res.set("replicate_100mib_local_write_seconds", round(lm, 3))
	b.res.set("replicate_100mib_store_runs_seconds", roundAll(store, 3))
	b.res.set("replicate_100mib_local_write_runs_seconds", roundAll(local, 3))
	b.res.set("replicate_100mib_all_applied_seconds", round(median(allApplied), 3))
	b.res.set("replicate_100mib_store_mb_per_s", round(replicateSize/1e6/sm, 1))
	b.res.set("replicate_100mib_local_write_mb_per_s", round(replicateSize/1e6/lm, 1))
	b.res.set("replicate_100mib_follower_wchar_mib", round(median(followerWchar), 1))
	b.res.set("replicate_100mib_follower_storage_write_mib", round(median(followerWrites), 1))
	b.res.detail("store 100 MiB, 3 replicas", "%.3fs (%.1f MB/s), runs %v s", sm, replicateSize/1e6/sm, roundAll(store, 3))
	b.res.detail("local write+fsync 100 MiB", "%.3fs (%.1f MB/s), runs %v s", lm, replicateSize/1e6/lm, roundAll(local, 3))
	b.res.detail("floor: 3 writers x 2 copies + fsync", "%.3fs (%.2fx one local write), runs %v s", fm, fm/lm, roundAll(floor, 3))
	b.res.detail("store until all 3 applied", "%.3fs (median)", median(allApplied))
	b.res.detail("follower writes per 100 MiB stored", "%.0f MiB in write syscalls, %.0f MiB to storage (median; /proc/<pid>/io wchar, write_bytes, until %s after all applied)",
		median(followerWchar), median(followerWrites), settleTime)
	return nil
}

// procIO is a process's write counters from /proc/<pid>/io: wchar is what
// it passed to write syscalls (files and sockets), writeBytes what it
// caused to be written to storage. Zero when unreadable; context only.
type procIO struct{ wchar, writeBytes int64 }

func readProcIO(pid int) procIO {
	var r procIO
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return r
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, v, ok := strings.Cut(line, ": ")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if !ok || err != nil {
			continue
		}
		switch name {
		case "wchar":
			r.wchar = n
		case "write_bytes":
			r.writeBytes = n
		}
	}
	return r
}

// floorWrite runs three writers at once, each writing content to two
// files of its own with one fsync per file, and returns the time until the
// last one finished: what three replicas on this one disk pay at least to
// keep the bytes durably in a log and in a blob.
func floorWrite(dir string, content []byte) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	errs := make(chan error, 3)
	start := time.Now()
	for w := range 3 {
		go func() {
			for _, name := range []string{"log", "blob"} {
				if _, err := localWrite(filepath.Join(dir, fmt.Sprintf("%s-%d", name, w)), content); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var firstErr error
	for range 3 {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return time.Since(start), firstErr
}

// localWrite creates path, writes content, fsyncs and closes it, and
// removes it again; only the write, fsync and close are timed.
func localWrite(path string, content []byte) (time.Duration, error) {
	defer os.Remove(path)
	start := time.Now()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
