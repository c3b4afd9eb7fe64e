// Command bench measures sourceraft against plain baselines on the same
// machine in the same run: serving from a follower against http.FileServer,
// a replicated store against a local write+fsync, the leader's memory while
// it stores a large artifact and while it reconciles a 100 MiB Helm index
// (beside upstream Flux's when -upstream-bin names it), and failover time.
// `make bench` runs it with
// SOURCERAFT_BIN and BENCH_OUT set; it prints a table and writes JSON.
//
// Targets are reported, never enforced: a miss exits 0 because the numbers
// are the product. Only a phase that could not measure exits non-zero.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

type config struct {
	binary   string
	out      string
	tmp      string
	keep     bool
	clients  int
	warmup   time.Duration
	duration time.Duration
	rounds   int
	seed     uint64
	phases   map[string]bool
	verbose  bool
	args     []string
	deadline time.Duration
	// profile is where replicas' profiles go; empty: none are taken.
	profile string
	// upstream, when set, is Flux's source-controller, measured beside
	// sourceraft in the helmindex phase.
	upstream string
}

var allPhases = []string{"serve", "replicate", "rss", "failover", "disk", "s3", "helmindex"}

func main() {
	if len(os.Args) == 3 && os.Args[1] == fileServerCommand {
		os.Exit(runFileServer(os.Args[2]))
	}
	var cfg config
	var phases string
	flag.StringVar(&cfg.binary, "bin", os.Getenv("SOURCERAFT_BIN"), "source-controller binary (default $SOURCERAFT_BIN)")
	flag.StringVar(&cfg.out, "out", envOr("BENCH_OUT", "bench-results.json"), "JSON output file (default $BENCH_OUT or bench-results.json)")
	flag.StringVar(&cfg.tmp, "tmp", "", "parent of the temporary directory (default: the system temp dir)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (replica data and logs)")
	flag.IntVar(&cfg.clients, "clients", 32, "concurrent keep-alive clients per serving measurement")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "warm-up before each serving measurement")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of each serving measurement")
	flag.IntVar(&cfg.rounds, "rounds", 3, "measurements per subject; medians are reported")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the random artifact content")
	flag.StringVar(&phases, "phases", strings.Join(allPhases, ","), "comma-separated phases to run")
	flag.BoolVar(&cfg.verbose, "v", false, "copy replica logs to stderr")
	replicaArgs := flag.String("replica-args", "", "extra space-separated flags for every replica, for experiments (recorded in the JSON)")
	flag.DurationVar(&cfg.deadline, "deadline", 25*time.Minute, "abort the whole run after this long")
	flag.StringVar(&cfg.profile, "profile", "", "run replicas with --pprof and save profiles into this directory: the follower's CPU in each size's first serving round, the leader's CPU while it stores 100 MiB, and the leader's and a follower's heap after each memory measurement")
	flag.StringVar(&cfg.upstream, "upstream-bin", os.Getenv("UPSTREAM_SOURCE_CONTROLLER"), "Flux source-controller binary to measure beside sourceraft in the helmindex phase (default $UPSTREAM_SOURCE_CONTROLLER; none: skipped)")
	flag.Parse()

	cfg.args = strings.Fields(*replicaArgs)
	if cfg.profile != "" {
		if err := os.MkdirAll(cfg.profile, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "-profile:", err)
			os.Exit(2)
		}
		cfg.args = append(cfg.args, "--pprof")
	}
	cfg.phases = map[string]bool{}
	for _, p := range strings.Split(phases, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !slices.Contains(allPhases, p) {
			fmt.Fprintf(os.Stderr, "unknown phase %q (have %s)\n", p, strings.Join(allPhases, ","))
			os.Exit(2)
		}
		cfg.phases[p] = true
	}
	if cfg.clients < 1 || cfg.rounds < 1 || cfg.duration <= 0 || cfg.warmup < 0 {
		fmt.Fprintln(os.Stderr, "-clients and -rounds must be >= 1, -duration > 0, -warmup >= 0")
		os.Exit(2)
	}
	os.Exit(run(cfg))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// run returns the exit code; main exits only after run's deferred cleanup
// (replica processes, temp dirs) has happened.
func run(cfg config) int {
	if cfg.binary == "" {
		fmt.Fprintln(os.Stderr, "no source-controller binary: set SOURCERAFT_BIN or -bin (make bench does)")
		return 2
	}
	bin, err := filepath.Abs(cfg.binary)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "source-controller binary:", err)
		return 2
	}
	cfg.binary = bin
	if _, err := os.Stat("/proc/self/status"); err != nil {
		fmt.Fprintln(os.Stderr, "the memory phase reads /proc/<pid>/status; no /proc here:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.deadline)
	defer cancel()

	root, err := os.MkdirTemp(cfg.tmp, "sourceraft-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if cfg.keep {
		fmt.Fprintln(os.Stderr, "keeping", root)
	} else {
		defer os.RemoveAll(root)
	}

	b := &bench{cfg: cfg, root: root, res: newResults()}
	started := time.Now()
	b.res.meta["go_version"] = runtime.Version()
	b.res.meta["num_cpu"] = runtime.NumCPU()
	b.res.meta["started_at"] = started.UTC().Format(time.RFC3339)
	b.res.meta["clients"] = cfg.clients
	b.res.meta["warmup_seconds"] = cfg.warmup.Seconds()
	b.res.meta["duration_seconds"] = cfg.duration.Seconds()
	b.res.meta["rounds"] = cfg.rounds
	b.res.meta["seed"] = cfg.seed
	if len(cfg.args) > 0 {
		b.res.meta["replica_args"] = cfg.args
	}

	// Other work on the machine skews every figure here; the load average
	// lets a reader tell a quiet run from a busy one.
	b.res.meta["loadavg_start"] = loadavg()
	if l := loadavg(); len(l) > 0 && l[0] > 1 {
		fmt.Fprintf(os.Stderr, "warning: load average %.2f before the run; results will be noisy\n", l[0])
	}
	failed := b.runPhases(ctx)
	b.res.meta["loadavg_end"] = loadavg()
	b.res.meta["total_seconds"] = round(time.Since(started).Seconds(), 1)

	b.res.printTable(os.Stdout)
	if err := b.res.writeJSON(cfg.out); err != nil {
		fmt.Fprintln(os.Stderr, "write results:", err)
		return 1
	}
	fmt.Printf("\nresults written to %s\n", cfg.out)
	if failed {
		return 1
	}
	return 0
}

type bench struct {
	cfg  config
	root string
	res  *results
}

// runPhases runs the selected phases on three clusters: one that serves
// and replicates, a fresh one for memory and failover, so that the memory
// baseline is not a heap already grown by earlier phases, and one that
// collects garbage at once for the disk phase.
func (b *bench) runPhases(ctx context.Context) (failed bool) {
	phase := func(name string, fn func() error) {
		if !b.cfg.phases[name] || ctx.Err() != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "== %s\n", name)
		t := time.Now()
		err := func() (err error) {
			// A panic must still reach the deferred cluster shutdowns.
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}()
			return fn()
		}()
		b.res.meta[name+"_phase_seconds"] = round(time.Since(t).Seconds(), 1)
		if err != nil {
			failed = true
			b.res.errors[name] = err.Error()
			fmt.Fprintf(os.Stderr, "== %s FAILED: %v\n", name, err)
		}
	}

	if (b.cfg.phases["serve"] || b.cfg.phases["replicate"]) && ctx.Err() == nil {
		err := b.withCluster(ctx, "cluster-a", nil, func(c *cluster.Cluster) error {
			phase("serve", func() error { return b.serve(ctx, c) })
			phase("replicate", func() error { return b.replicate(ctx, c) })
			return nil
		})
		if err != nil {
			failed = true
			b.res.errors["cluster-a"] = err.Error()
			fmt.Fprintln(os.Stderr, "cluster-a:", err)
		}
	}
	if (b.cfg.phases["rss"] || b.cfg.phases["failover"]) && ctx.Err() == nil {
		// The largest memory measurement stores exactly 1 GiB, the default limit.
		args := []string{fmt.Sprintf("--max-artifact-size=%d", 2<<30)}
		err := b.withCluster(ctx, "cluster-b", args, func(c *cluster.Cluster) error {
			phase("rss", func() error { return b.rss(ctx, c) })
			phase("failover", func() error { return b.failover(ctx, c) })
			return nil
		})
		if err != nil {
			failed = true
			b.res.errors["cluster-b"] = err.Error()
			fmt.Fprintln(os.Stderr, "cluster-b:", err)
		}
	}
	if b.cfg.phases["disk"] && ctx.Err() == nil {
		err := b.withCluster(ctx, "cluster-c", diskArgs, func(c *cluster.Cluster) error {
			phase("disk", func() error { return b.disk(ctx, c) })
			return nil
		})
		if err != nil {
			failed = true
			b.res.errors["cluster-c"] = err.Error()
			fmt.Fprintln(os.Stderr, "cluster-c:", err)
		}
	}
	// The S3 backend's cluster runs against a MinIO process of its own.
	phase("s3", func() error { return b.s3(ctx) })
	// The cluster of the helmindex phase reconciles against an API server
	// of its own (envtest).
	phase("helmindex", func() error { return b.helmIndex(ctx) })
	if ctx.Err() != nil {
		b.res.errors["run"] = ctx.Err().Error()
		failed = true
	}
	return failed
}

// withCluster runs fn against a fresh 3-replica cluster with a leader,
// its replicas given args after the run's own, and stops every replica
// afterwards, whatever happened. On its own error or
// any phase error recorded meanwhile, the tails of the replica logs go to stderr.
func (b *bench) withCluster(ctx context.Context, name string, args []string, fn func(*cluster.Cluster) error) (err error) {
	dir := filepath.Join(b.root, name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	opts := cluster.Options{Binary: b.cfg.binary, Dir: dir, Replicas: 3, Args: append(slices.Clone(b.cfg.args), args...)}
	if b.cfg.verbose {
		opts.Stdout = os.Stderr
	}
	c, err := cluster.New(opts)
	if err != nil {
		return err
	}
	errsBefore := len(b.res.errors)
	defer func() {
		c.Close()
		if err != nil || len(b.res.errors) > errsBefore {
			dumpLogs(c, os.Stderr)
		}
	}()
	if err := c.Start(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(wctx); err != nil {
		return err
	}
	return fn(c)
}

func dumpLogs(c *cluster.Cluster, w io.Writer) {
	for _, r := range c.Replicas {
		data, _ := os.ReadFile(filepath.Join(r.Dir, "log"))
		if len(data) > 4<<10 {
			data = data[len(data)-4<<10:]
		}
		fmt.Fprintf(w, "---- %s log (tail) ----\n%s\n", r.ID, data)
	}
}

// loadavg is the 1, 5 and 15 minute load averages, nil if unreadable.
func loadavg() []float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return nil
	}
	var out []float64
	for _, f := range fields[:3] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil
		}
		out = append(out, v)
	}
	return out
}

// results holds the JSON keys and the table rows built from them.
type results struct {
	values map[string]any
	meta   map[string]any
	errors map[string]string
	// details are the supporting rows printed under the headline table.
	details [][2]string
}

func newResults() *results {
	return &results{values: map[string]any{}, meta: map[string]any{}, errors: map[string]string{}}
}

func (r *results) set(key string, v any) { r.values[key] = v }

func (r *results) detail(name, format string, args ...any) {
	r.details = append(r.details, [2]string{name, fmt.Sprintf(format, args...)})
}

type target struct {
	key, label, unit, op string
	limit                float64
	// of, when set, makes limit a factor of that key's value in this run.
	of string
}

var targets = []target{
	{key: "serve_10kib_ratio_vs_fileserver", label: "serve 10 KiB: follower / FileServer req/s", unit: "x", op: ">=", limit: 1.2},
	{key: "serve_1mib_ratio_vs_fileserver", label: "serve 1 MiB: follower / FileServer req/s", unit: "x", op: ">=", limit: 1.0},
	{key: "serve_20mib_ratio_vs_fileserver", label: "serve 20 MiB: follower / FileServer req/s", unit: "x", op: ">=", limit: 1.0},
	{key: "serve_100mib_ratio_vs_fileserver", label: "serve 100 MiB: follower / FileServer req/s", unit: "x", op: ">=", limit: 1.0},
	{key: "replicate_100mib_ratio_vs_local_write", label: "store 100 MiB (3 replicas) / local write+fsync", unit: "x", op: "<=", limit: 3.0},
	{key: "replicate_100mib_ratio_vs_floor", label: "store 100 MiB (3 replicas) / 3 writers x 2 copies floor", unit: "x", op: "<=", limit: 1.5},
	{key: "follower_write_amplification", label: "follower bytes written to storage / bytes stored", unit: "x", op: "<=", limit: 2.2},
	{key: "store_200mib_peak_rss_mib", label: "leader peak RSS increase storing 200 MiB", unit: "MiB", op: "<=", limit: 64},
	{key: "store_1gib_peak_rss_mib", label: "leader peak RSS increase storing 1 GiB", unit: "MiB", op: "<=", limit: 1.1, of: "store_200mib_peak_rss_mib"},
	{key: "failover_seconds", label: "SIGKILL leader -> next write accepted", unit: "s", op: "<=", limit: 3},
	{key: "disk_per_replica_ratio", label: "replica volume bytes / live artifact bytes", unit: "x", op: "<=", limit: 2.5},
	{key: "helm_index_rss_ratio_vs_index_size", label: "leader peak RSS increase / index size, 100 MiB index + 4 charts", unit: "x", op: "<=", limit: 2.0},
}

// bound is the target's limit in this run; false when it depends on a
// value that was not measured.
func (t target) bound(r *results) (float64, bool) {
	if t.of == "" {
		return t.limit, true
	}
	base, ok := r.values[t.of].(float64)
	return t.limit * base, ok
}

// describe is the target as printed: "<= 64" or "<= 1.1 x store_200mib_peak_rss_mib (70.4)".
func (t target) describe(r *results) string {
	if t.of == "" {
		return fmt.Sprintf("%s %g", t.op, t.limit)
	}
	if b, ok := t.bound(r); ok {
		return fmt.Sprintf("%s %g x %s (%.3g)", t.op, t.limit, t.of, b)
	}
	return fmt.Sprintf("%s %g x %s", t.op, t.limit, t.of)
}

func (t target) pass(r *results, v float64) bool {
	limit, ok := t.bound(r)
	if !ok {
		return false
	}
	if t.op == ">=" {
		return v >= limit
	}
	return v <= limit
}

// targetsMet is the pass/fail of every target that has a value.
func (r *results) targetsMet() map[string]any {
	out := map[string]any{}
	for _, t := range targets {
		if v, ok := r.values[t.key].(float64); ok {
			out[t.key] = map[string]any{"target": t.describe(r), "pass": t.pass(r, v)}
		}
	}
	return out
}

func (r *results) printTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nsourceraft benchmark\t%s, %d CPUs, %s\n", r.meta["go_version"], r.meta["num_cpu"], r.meta["started_at"])
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tRESULT\tKEY")
	for _, t := range targets {
		v, ok := r.values[t.key].(float64)
		status, value := "NOT RUN", "-"
		if ok {
			value = fmt.Sprintf("%.3g %s", v, t.unit)
			status = "MISS"
			if t.pass(r, v) {
				status = "pass"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.label, value, t.describe(r), status, t.key)
	}
	tw.Flush()
	if len(r.details) > 0 {
		fmt.Fprintln(w, "\ndetails")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, d := range r.details {
			fmt.Fprintf(tw, "  %s\t%s\n", d[0], d[1])
		}
		tw.Flush()
	}
	if l, ok := r.meta["loadavg_start"].([]float64); ok && len(l) > 0 {
		fmt.Fprintf(w, "\nload average at start %.2f, at end %v: other work on this machine makes every figure noisier\n", l[0], r.meta["loadavg_end"])
	}
	if len(r.errors) > 0 {
		fmt.Fprintln(w, "\nerrors")
		for _, k := range slices.Sorted(maps.Keys(r.errors)) {
			fmt.Fprintf(w, "  %s: %s\n", k, r.errors[k])
		}
	}
}

func (r *results) writeJSON(path string) error {
	out := map[string]any{}
	for k, v := range r.values {
		out[k] = v
	}
	out["targets"] = r.targetsMet()
	out["meta"] = r.meta
	if len(r.errors) > 0 {
		out["errors"] = r.errors
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // keep ">=" readable
	if err := enc.Encode(out); err != nil {
		return err
	}
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// round keeps JSON readable; the measurements are not that precise anyway.
func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

func roundAll(xs []float64, digits int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round(x, digits)
	}
	return out
}

const mib = 1 << 20

// randomContent is seeded so every run stores the same bytes, and
// incompressible so nothing on the path can shortcut it.
func randomContent(seed uint64, n int) []byte {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b) // never fails
	return b
}

// randomStream is randomContent as a reader of n bytes, for sizes not to
// be held in memory, and the digest of what it yielded once read to the end.
func randomStream(seed uint64, n int64) (io.Reader, func() string) {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	h := sha256.New()
	r := io.TeeReader(io.LimitReader(rand.NewChaCha8(key), n), h)
	return r, func() string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
}

// errNoFollower is returned when no running replica other than the leader exists.
var errNoFollower = errors.New("no running follower")

// follower picks a running replica that is not the leader.
func follower(c *cluster.Cluster, leader int) (int, error) {
	for i := range c.Replicas {
		if i != leader && c.Running(i) {
			return i, nil
		}
	}
	return -1, errNoFollower
}

// waitAllApplied waits until every running replica has applied what the
// leader has committed, so one measurement does not pay for the previous.
func waitAllApplied(ctx context.Context, c *cluster.Cluster, leader int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := c.Status(ctx, leader)
	if err != nil {
		return err
	}
	for i := range c.Replicas {
		if !c.Running(i) {
			continue
		}
		if err := c.WaitApplied(ctx, i, st.CommitIndex); err != nil {
			return err
		}
	}
	return nil
}
