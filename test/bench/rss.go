package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
)

const (
	rssInterval = 10 * time.Millisecond
	// maxSamples bounds the sampler at five minutes of 10 ms samples.
	maxSamples = 30000
)

// procMem is the part of /proc/<pid>/status that tells where resident
// memory is, in bytes. bbolt maps its file, so pages of the mapping that
// were touched count in VmRSS as RssFile; heap growth shows as RssAnon.
type procMem struct {
	VmRSS, VmHWM, RssAnon, RssFile, RssShmem int64
}

func readProcMem(pid int) (procMem, error) {
	var m procMem
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	fields := map[string]*int64{"VmRSS": &m.VmRSS, "VmHWM": &m.VmHWM, "RssAnon": &m.RssAnon, "RssFile": &m.RssFile, "RssShmem": &m.RssShmem}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		p, want := fields[name]
		if !ok || !want {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("/proc/%d/status: unexpected %s line %q", pid, name, sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("/proc/%d/status: %s: %w", pid, name, err)
		}
		*p = kb << 10
	}
	if m.VmRSS == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, nil
}

// peakMem keeps the maximum of each field on its own: the anon and file
// peaks need not fall on the same sample.
func peakMem(a, b procMem) procMem {
	return procMem{
		VmRSS: max(a.VmRSS, b.VmRSS), VmHWM: max(a.VmHWM, b.VmHWM),
		RssAnon: max(a.RssAnon, b.RssAnon), RssFile: max(a.RssFile, b.RssFile), RssShmem: max(a.RssShmem, b.RssShmem),
	}
}

// sampler polls the memory of a set of processes until stopped.
type sampler struct {
	pids    []int
	mu      sync.Mutex
	peak    map[int]procMem
	samples int
	err     error
	cancel  context.CancelFunc
	done    chan struct{}
}

func startSampler(ctx context.Context, pids []int) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{pids: pids, peak: map[int]procMem{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for s.sample() && s.samples < maxSamples {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range s.pids {
		m, err := readProcMem(pid)
		if err != nil {
			s.err = err
			return false
		}
		s.peak[pid] = peakMem(s.peak[pid], m)
	}
	s.samples++
	return true
}

// stop takes one last sample, so the peak covers the moment after the
// store returned, and ends the sampler.
func (s *sampler) stop() (map[int]procMem, int, error) {
	s.sample()
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.samples, s.err
}

func toMiB(b int64) float64 { return round(float64(b)/mib, 1) }

// rssSizes are the stores whose memory is measured, in this order: the
// leader's peak must not grow with the artifact's size.
var rssSizes = []struct {
	name string
	size int64
}{
	{"200mib", 200 * mib},
	{"1gib", 1 << 30},
}

// rss stores each of rssSizes through the leader of a fresh cluster and
// reports how far its resident memory rose above where it was just before.
func (b *bench) rss(ctx context.Context, c *cluster.Cluster) error {
	for i, sz := range rssSizes {
		prefix := "store_" + sz.name + "_"
		var err error
		// A leader change aborts an upload (503); on this shared machine a
		// minute-long store sometimes sees one. The measurement is then
		// taken again from a fresh baseline, once.
		for attempt := 1; attempt <= rssAttempts; attempt++ {
			err = b.rssStore(ctx, c, prefix, sz.size, b.cfg.seed*1000+200+uint64(i))
			b.res.set(prefix+"attempts", attempt)
			if clusterapi.StatusCode(err) != http.StatusServiceUnavailable {
				break
			}
			fmt.Fprintf(os.Stderr, "   store %s attempt %d: %v\n", sz.name, attempt, err)
		}
		if err != nil {
			return fmt.Errorf("store %s: %w", sz.name, err)
		}
	}
	return nil
}

const rssAttempts = 2

func (b *bench) rssStore(ctx context.Context, c *cluster.Cluster, prefix string, size int64, seed uint64) error {
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	if err := waitAllApplied(ctx, c, leader, 30*time.Second); err != nil {
		return err
	}
	pids := []int{}
	for i := range c.Replicas {
		if pid := c.PID(i); pid != 0 {
			pids = append(pids, pid)
		}
	}
	lpid := c.PID(leader)
	if lpid == 0 {
		return fmt.Errorf("leader %s has no process", c.Replicas[leader].ID)
	}
	before := map[int]procMem{}
	for _, pid := range pids {
		m, err := readProcMem(pid)
		if err != nil {
			return err
		}
		before[pid] = m
	}
	heapBefore, _ := scrapeMetric(ctx, c.Replicas[leader].MetricsAddr, "go_memstats_heap_sys_bytes")

	path := fmt.Sprintf("gitrepository/bench/rss-%d/artifact.tar.gz", size)
	// Streamed and hashed on the way: a GiB of content is never held here.
	content, sum := randomStream(seed, size)
	smp := startSampler(ctx, pids)
	pctx, cancel := context.WithTimeout(ctx, 600*time.Second)
	start := time.Now()
	res, err := c.Put(pctx, leader, path, content, size)
	took := time.Since(start)
	cancel()
	peaks, samples, serr := smp.stop()
	if err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	if serr != nil {
		return fmt.Errorf("sample memory: %w", serr)
	}
	if want := sum(); res.Digest != want {
		return fmt.Errorf("store %s: digest %s, want %s", path, res.Digest, want)
	}
	after, err := readProcMem(lpid)
	if err != nil {
		return err
	}
	byMap, err := rssByMapping(lpid, "fsm.db", "raft.db")
	if err != nil {
		return err
	}
	heapAfter, _ := scrapeMetric(ctx, c.Replicas[leader].MetricsAddr, "go_memstats_heap_sys_bytes")
	b.heapProfile(ctx, c.Replicas[leader].MetricsAddr, prefix+"leader-heap")
	if f, err := follower(c, leader); err == nil {
		b.heapProfile(ctx, c.Replicas[f].MetricsAddr, prefix+"follower-heap")
	}

	pre, peak := before[lpid], peaks[lpid]
	b.res.set(prefix+"peak_rss_mib", toMiB(peak.VmRSS-pre.VmRSS))
	b.res.set(prefix+"rss_before_mib", toMiB(pre.VmRSS))
	b.res.set(prefix+"rss_peak_mib", toMiB(peak.VmRSS))
	b.res.set(prefix+"peak_rss_anon_increase_mib", toMiB(peak.RssAnon-pre.RssAnon))
	b.res.set(prefix+"peak_rss_file_increase_mib", toMiB(peak.RssFile-pre.RssFile))
	b.res.set(prefix+"rss_anon_before_mib", toMiB(pre.RssAnon))
	b.res.set(prefix+"rss_file_before_mib", toMiB(pre.RssFile))
	b.res.set(prefix+"vmhwm_before_mib", toMiB(pre.VmHWM))
	b.res.set(prefix+"vmhwm_after_mib", toMiB(after.VmHWM))
	b.res.set(prefix+"rss_samples", samples)
	b.res.set(prefix+"store_seconds", round(took.Seconds(), 3))
	if heapBefore > 0 && heapAfter > 0 {
		b.res.set(prefix+"go_heap_sys_increase_mib", toMiB(int64(heapAfter-heapBefore)))
	}
	b.res.set(prefix+"rss_after_fsm_db_mmap_mib", toMiB(byMap["fsm.db"]))
	b.res.set(prefix+"rss_after_raft_db_mmap_mib", toMiB(byMap["raft.db"]))
	var followerPeak int64
	for _, pid := range pids {
		if pid != lpid {
			followerPeak = max(followerPeak, peaks[pid].VmRSS-before[pid].VmRSS)
		}
	}
	b.res.set(prefix+"follower_peak_rss_mib", toMiB(followerPeak))

	label := fmt.Sprintf("%d MiB", size/mib)
	b.res.detail("leader RSS storing "+label, "%.1f -> peak %.1f MiB (+%.1f: anon +%.1f, file +%.1f), %d samples over %.2fs",
		toMiB(pre.VmRSS), toMiB(peak.VmRSS), toMiB(peak.VmRSS-pre.VmRSS),
		toMiB(peak.RssAnon-pre.RssAnon), toMiB(peak.RssFile-pre.RssFile), samples, took.Seconds())
	b.res.detail("leader VmHWM, "+label, "%.1f -> %.1f MiB", toMiB(pre.VmHWM), toMiB(after.VmHWM))
	b.res.detail("leader RSS in mmaps after "+label, "fsm.db %.1f MiB, raft.db %.1f MiB", toMiB(byMap["fsm.db"]), toMiB(byMap["raft.db"]))
	b.res.detail("followers' peak RSS increase, "+label, "+%.1f MiB (largest of the two)", toMiB(followerPeak))
	return nil
}

// rssByMapping sums the resident size of a process's mappings of each
// database file: which of bbolt's files the file-backed RSS belongs to.
func rssByMapping(pid int, suffixes ...string) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	current := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		// A mapping's header starts with its address range; its name, if
		// any, is the sixth field.
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			current = ""
			if len(fields) >= 6 {
				for _, suf := range suffixes {
					if strings.HasSuffix(fields[5], suf) {
						current = suf
					}
				}
			}
			continue
		}
		if current != "" && fields[0] == "Rss:" && len(fields) == 3 {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return nil, err
			}
			out[current] += kb << 10
		}
	}
	return out, sc.Err()
}

// scrapeMetric reads one unlabelled sample from a replica's /metrics, for
// context only: a failure just leaves the extra key out.
func scrapeMetric(ctx context.Context, addr, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s", addr, name)
}
