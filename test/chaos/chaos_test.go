package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/internal/minioserver"
)

// Retention the replicas run with; the tracker applies the same policy.
const (
	retentionRecords = 2
	retentionTTL     = 20 * time.Second
	// resumeBudget is the claim measured at every leader kill: a commit
	// pushed right after the kill is a Ready artifact within this long
	// after a new leader is elected.
	resumeBudget = 5 * time.Second
)

// TestChaos3Replicas also scales the cluster 3 → 5 → 3 midway.
func TestChaos3Replicas(t *testing.T) { runChaos(t, 3, 2) }

func TestChaos5Replicas(t *testing.T) { runChaos(t, 5, 0) }

// config is one chaos run's shape.
type config struct {
	replicas  int
	duration  time.Duration
	repos     int
	consumers int
	pace      time.Duration // between one consumer's downloads
	putObjs   int
	// spares are the replicas the scale-up adds and the scale-down removes.
	spares int
	faults map[fault]bool
}

// suite is one chaos run: the cluster, the load, the faults and what they
// observed.
type suite struct {
	t *testing.T
	// bucket holds the blobs under CHAOS_BACKEND=s3.
	bucket *bucketRef
	cfg    config
	seed   uint64
	start  time.Time
	c      *cluster.Cluster
	git    *gitserver.Server
	ns     string
	tr     *tracker
	probe  *gitRepo
	// probeRng draws the probe commits' content, so that whether a kill
	// hit the leader (a matter of timing) does not shift the fault loop's
	// own random stream.
	probeRng *rand.Rand
	repos    []*gitRepo
	n        counters
	// gitURL is the Git server's address as the replicas dial it.
	gitURL string
	// smallDisk is the replica whose data directory is a tmpfs of its own,
	// filled by the disk-full fault.
	smallDisk int

	stop chan struct{} // closed: load stops

	mu sync.Mutex
	// members are the replicas in the Raft configuration, as a
	// StatefulSet's replica count has them: consumers, faults and the
	// final checks use these; spares wait for the scale-up.
	members, spares []int
	problems        []string
	events          []string
	leaders         map[uint64]map[string]bool // term → replicas seen leading it
	elections       []time.Duration            // leader kill → new leader
	resumes         []time.Duration            // new leader → probe commit Ready
	waits           []time.Duration            // downloads that had to retry: time to success
	rejoins         []time.Duration            // partition healed → replica Ready, following the leader
	putErrors       []string
	converged       string
	// scaledTo are the leader's configuration after the scale-up and after
	// the scale-down, as "replica-3/Voter".
	scaledTo [2][]string
	// stacks are goroutine dumps taken when a replica stopped answering.
	stacks map[string]string
}

func runChaos(t *testing.T, replicas, spares int) {
	raw := os.Getenv("CHAOS_DURATION")
	if raw == "" {
		t.Skip("CHAOS_DURATION is unset: the chaos suite runs under `make chaos` / `make chaos-short`")
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		t.Fatalf("CHAOS_DURATION=%q: %v", raw, err)
	}
	faults, err := parseFaults(os.Getenv("CHAOS_FAULTS"))
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the chaos suite runs replicas in network namespaces (partitions) and on a tmpfs (disk full): run it as root")
	}
	s := &suite{t: t, start: time.Now(), stop: make(chan struct{}), leaders: map[uint64]map[string]bool{},
		cfg:  config{replicas: replicas, duration: d, repos: 6, consumers: 4, pace: 30 * time.Millisecond, putObjs: 4, spares: spares, faults: faults},
		seed: seedFor(t),
		tr:   newTracker(retentionRecords, retentionTTL)}
	s.probeRng = s.rng(5)
	t.Logf("seed %d (replay with CHAOS_SEED=%d), %d replicas, faults for %v", s.seed, s.seed, replicas, d)
	s.run()
}

// seedFor derives the run's seed from the test name unless CHAOS_SEED is set.
func seedFor(t *testing.T) uint64 {
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
		return n
	}
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	return h.Sum64()
}

// useBucket runs the replicas with --storage-backend=s3 against a MinIO
// server of the run's own, reached from their namespaces through a
// forwarder like the Git server.
func (s *suite) useBucket(args []string) {
	t := s.t
	srv := minioserver.Start(t, minioserver.Options{})
	bucket := srv.NewBucket(t, nil)
	endpoint, err := s.c.Forward(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := minioserver.WriteCredentials(t.TempDir(), minioserver.Password)
	if err != nil {
		t.Fatal(err)
	}
	s.bucket = &bucketRef{srv: srv, name: bucket}
	s.c.SetArgs(append(args, "--storage-backend=s3", "--s3-endpoint="+endpoint, "--s3-bucket="+bucket,
		"--s3-insecure", "--s3-path-style", "--s3-credentials-file="+creds, "--s3-cache-size=256Mi"))
	s.event("blob backend s3: bucket %s at %s", bucket, srv.Endpoint)
}

// rng returns an independent random stream of the run's seed.
func (s *suite) rng(stream uint64) *rand.Rand { return rand.New(rand.NewPCG(s.seed, stream)) }

func (s *suite) run() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	s.setup(ctx)
	s.event("setup took %v; faults for %v from now", time.Since(s.start).Round(time.Millisecond), s.cfg.duration)

	// Background load.
	var load sync.WaitGroup
	for i, g := range s.repos {
		load.Add(1)
		go func() { defer load.Done(); s.committer(g, s.rng(100+uint64(i)), int(s.cfg.duration/time.Second)+10) }()
	}
	load.Add(2)
	go func() { defer load.Done(); s.watchStatuses(ctx) }()
	go func() {
		defer load.Done()
		s.putter(ctx, s.rng(200), s.cfg.putObjs, int(s.cfg.duration/(100*time.Millisecond))+10)
	}()
	for i := 0; i < s.cfg.consumers; i++ {
		load.Add(1)
		go func() {
			defer load.Done()
			s.consumer(ctx, s.rng(300+uint64(i)), int(s.cfg.duration/s.cfg.pace)+100, s.cfg.pace)
		}()
	}
	monCtx, stopMonitor := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { defer close(monDone); s.monitorTerms(monCtx) }()

	// Faults until the duration is over.
	s.faultLoop(ctx, s.rng(1))

	// Heal, then stop the load.
	s.heal(ctx)
	close(s.stop)
	if !waitGroup(&load, 2*time.Minute) {
		s.problem("load goroutines did not stop within 2m")
	}

	// Verify.
	s.verifyReconciled(ctx)
	s.verifyConverged(ctx)
	stopMonitor()
	<-monDone
	s.verifyStores(ctx)
	s.verifyBucket(ctx)
	s.verifyTerms()
	s.report()
}

// setup starts the Git server, the replicas, the GitRepositories, and
// waits until every source has a first artifact.
func (s *suite) setup(ctx context.Context) {
	t := s.t
	var err error
	if s.git, err = gitserver.Start(t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.git.Close() })
	if s.ns, err = env.NewNamespace(ctx, "chaos"); err != nil {
		t.Fatal(err)
	}
	rng := s.rng(2)
	for i := 0; i <= s.cfg.repos; i++ {
		name := fmt.Sprintf("app%d", i)
		if i == s.cfg.repos {
			name = "probe"
		}
		g, err := s.newGitRepo(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.commit(g, rng, true); err != nil {
			t.Fatal(err)
		}
		if name == "probe" {
			s.probe = g
		} else {
			s.repos = append(s.repos, g)
		}
	}

	// Each replica in a network namespace of its own; the API server and
	// the Git server reach them through forwarders on the bridge.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	args := []string{
		"--reconcile", "--kubeconfig=" + kubeconfig,
		"--artifact-retention-records=" + strconv.Itoa(retentionRecords),
		"--artifact-retention-ttl=" + retentionTTL.String(),
		"--gc-interval=5s",
		// Quick promotion of the replicas the scale-up adds.
		"--raft-server-stabilization-time=2s",
		// Goroutine dumps of a replica that stops answering.
		"--pprof",
	}
	s.c, err = cluster.New(cluster.Options{Binary: binary, Dir: t.TempDir(), Replicas: s.cfg.replicas, Netns: true, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	switch backend := os.Getenv("CHAOS_BACKEND"); backend {
	case "", "raft":
	case "s3":
		s.useBucket(args)
	default:
		t.Fatalf("CHAOS_BACKEND=%q: want raft or s3", backend)
	}
	// Mounted before any replica starts, unmounted after Close.
	s.smallDisk = 1
	if err := mountSmallDisk(t, s.c.Replicas[s.smallDisk]); err != nil {
		s.c.Close()
		t.Fatal(err)
	}
	t.Cleanup(s.c.Close)
	if err := s.writeKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	gitAddr, err := s.c.Forward(strings.TrimPrefix(s.git.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	s.gitURL = "http://" + gitAddr
	for i := range s.cfg.replicas {
		s.members = append(s.members, i)
	}
	for range s.cfg.spares {
		i, err := s.c.AddReplica()
		if err != nil {
			t.Fatal(err)
		}
		s.spares = append(s.spares, i)
	}
	// Registered after Close, so it runs first, while replicas still answer.
	t.Cleanup(func() {
		if t.Failed() {
			s.dump()
		}
	})
	for _, i := range s.members {
		if err := s.c.StartReplica(i); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := s.c.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	for _, g := range append([]*gitRepo{s.probe}, s.repos...) {
		interval := time.Duration(2000+rng.IntN(3000)) * time.Millisecond
		if g == s.probe {
			interval = 2 * time.Second
		}
		if err := s.createGitRepository(ctx, g, interval); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(s.observeStatuses(ctx)) < s.cfg.repos+1 {
		if time.Now().After(deadline) {
			t.Fatalf("sources not Ready 90s after creation: %v", s.observeStatuses(ctx))
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.event("cluster up: %d replicas, %d sources Ready", s.cfg.replicas, s.cfg.repos+1)
}

// grabStacks keeps replica i's goroutine dump for the failure dump.
func (s *suite) grabStacks(i int, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.c.Replicas[i].MetricsAddr+"/debug/pprof/goroutine?debug=2", nil)
	if err != nil {
		return
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		s.t.Logf("goroutine dump of %s: %v", s.c.Replicas[i].ID, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stacks == nil {
		s.stacks = map[string]string{}
	}
	s.stacks[fmt.Sprintf("%s.goroutines-%.0fs.txt", s.c.Replicas[i].ID, time.Since(s.start).Seconds())] = why + "\n\n" + string(b)
}

// memberList is a copy of the members.
func (s *suite) memberList() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.members...)
}

// writeKubeconfig writes a cluster-admin kubeconfig whose server is the
// API server's forwarder on the replicas' bridge.
func (s *suite) writeKubeconfig(path string) error {
	if err := env.WriteKubeconfig(path); err != nil {
		return err
	}
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return err
	}
	for _, cl := range kc.Clusters {
		u, err := url.Parse(cl.Server)
		if err != nil {
			return fmt.Errorf("kubeconfig server %q: %w", cl.Server, err)
		}
		fwd, err := s.c.Forward(u.Host)
		if err != nil {
			return err
		}
		u.Host = fwd
		cl.Server = u.String()
		// envtest's serving certificate names localhost.
		cl.TLSServerName = "localhost"
	}
	return clientcmd.WriteToFile(*kc, path)
}

// sleep waits d unless the load is stopped; false means stopped.
func (s *suite) sleep(d time.Duration) bool {
	select {
	case <-s.stop:
		return false
	case <-time.After(d):
		return true
	}
}

// problem records an invariant violation; the run fails at the end.
func (s *suite) problem(format string, args ...any) {
	msg := fmt.Sprintf("%8.3fs ", time.Since(s.start).Seconds()) + fmt.Sprintf(format, args...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < 20 {
		s.t.Log("PROBLEM " + msg)
	}
	if len(s.problems) < 1000 {
		s.problems = append(s.problems, msg)
	}
}

// event records and logs what the fault loop did.
func (s *suite) event(format string, args ...any) {
	msg := fmt.Sprintf("%8.3fs ", time.Since(s.start).Seconds()) + fmt.Sprintf(format, args...)
	s.t.Log(msg)
	s.mu.Lock()
	s.events = append(s.events, msg)
	s.mu.Unlock()
}

// monitorTerms polls every replica and remembers which ones claimed to
// lead each term: at most one may.
func (s *suite) monitorTerms(ctx context.Context) {
	for {
		for i := range s.c.Replicas {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := s.c.Status(sctx, i)
			cancel()
			if err != nil || st.State != "Leader" {
				continue
			}
			s.mu.Lock()
			if s.leaders[st.Term] == nil {
				s.leaders[st.Term] = map[string]bool{}
			}
			s.leaders[st.Term][st.NodeID] = true
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func waitGroup(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// report logs the failover figures and problems and prints the summary
// line; any problem fails the run.
func (s *suite) report() {
	s.mu.Lock()
	problems := append([]string(nil), s.problems...)
	elections := append([]time.Duration(nil), s.elections...)
	resumes := append([]time.Duration(nil), s.resumes...)
	converged := s.converged
	s.mu.Unlock()
	fmt.Printf("failover: %d replicas, %d leaders killed or cut off; fault → new leader %s; new leader → pushed commit Ready %s (budget %v)\n",
		s.cfg.replicas, len(elections), distribution(elections), distribution(resumes), resumeBudget)
	s.mu.Lock()
	rejoins := distribution(s.rejoins)
	s.mu.Unlock()
	fmt.Printf("minority: %d checks of a replica cut off from its peers, each Ready and serving every artifact it held; partition healed → following the leader again %s\n",
		s.n.minorityChecks.Load(), rejoins)
	s.mu.Lock()
	waits := distribution(s.waits)
	putErrors := s.putErrors
	s.mu.Unlock()
	if len(putErrors) > 0 {
		s.t.Logf("%d PUTs failed (allowed while faults last), the first ones:\n%s", len(putErrors),
			strings.Join(putErrors[:min(len(putErrors), 15)], "\n"))
	}
	s.t.Logf("%d commits, %d puts (%d acknowledged), %d downloads, %d superseded artifacts collected, %d spurious 404s",
		s.n.commits.Load(), s.n.puts.Load(), s.n.putsAcked.Load(), s.n.downloads.Load(), s.n.gone.Load(), s.n.spur.Load())
	fmt.Printf("availability: %d downloads found no replica serving at first and retried (Retry-After); time to success %s\n",
		s.n.retried.Load(), waits)
	size := fmt.Sprintf("%d replicas", s.cfg.replicas)
	s.mu.Lock()
	scaled := s.scaledTo[0] != nil && s.scaledTo[1] != nil
	s.mu.Unlock()
	switch {
	case len(s.spares) > 0 && scaled:
		size += fmt.Sprintf(" (scaled %d → %d → %d)", s.cfg.replicas, s.cfg.replicas+len(s.spares), s.cfg.replicas)
	case len(s.spares) > 0:
		size += fmt.Sprintf(" (scaling %d → %d → %d not completed)", s.cfg.replicas, s.cfg.replicas+len(s.spares), s.cfg.replicas)
	}
	fmt.Printf("chaos: %s, %d kills (%d of the leader), %d partitions (%d of the leader), %d pauses, %d disk full (of %d fills), %d rolling restarts, %d downloads, %d failed, %d digest mismatches, %d lost artifacts, %s\n",
		size, s.n.kills.Load(), s.n.leaderKills.Load(), s.n.partitions.Load(), s.n.leaderPartitions.Load(),
		s.n.ran[faultPause].Load(), s.n.ran[faultDiskFull].Load(), s.n.diskFills.Load(), s.n.ran[faultRolling].Load(),
		s.n.downloads.Load(), s.n.failed.Load(), s.n.mismatches.Load(), s.n.lost.Load(), converged)
	problems = append(problems, s.minimums()...)
	if len(problems) > 0 {
		s.t.Errorf("%d problems (seed %d):\n%s", len(problems), s.seed, strings.Join(problems, "\n"))
	}
}

// minDownloadsPerSecond of the fault window is the least the consumers
// must download and digest-check (they aim at one per 30 ms each) for a
// run to say anything about availability.
const minDownloadsPerSecond = 10

// minimums prints the "checked:" line, what the run did against what it
// must have done to prove anything, and returns each shortfall: a run in
// which faults, the leader, the scaling or the load never happened passes
// no invariant by doing nothing.
func (s *suite) minimums() []string {
	var short, ran []string
	for f := range numFaults {
		if !s.cfg.faults[f] {
			continue
		}
		n := s.n.ran[f].Load()
		ran = append(ran, fmt.Sprintf("%s %d", faultNames[f], n))
		if n == 0 {
			short = append(short, fmt.Sprintf("no %s fault took effect (enabled kinds must each run at least once)", faultNames[f]))
		}
	}
	hits := s.n.leaderKills.Load() + s.n.leaderPartitions.Load()
	leaderHit := "not enabled"
	if s.cfg.faults[faultKill] || s.cfg.faults[faultPartition] {
		leaderHit = fmt.Sprintf("%d (≥ 1)", hits)
		if hits == 0 {
			short = append(short, "the leader was never killed or cut off")
		}
	}
	s.mu.Lock()
	up, down := s.scaledTo[0], s.scaledTo[1]
	s.mu.Unlock()
	scaling := "none"
	if len(s.spares) > 0 {
		scaling = fmt.Sprintf("up to %v, down to %v", up, down)
		var voters []string
		for _, i := range append(s.memberList(), s.spares...) {
			voters = append(voters, s.c.Replicas[i].ID+"/Voter")
		}
		if slices.Sort(voters); !slices.Equal(up, voters) {
			short = append(short, fmt.Sprintf("scale-up: configuration %v, want voters %v", up, voters))
		}
		voters = voters[:0]
		for _, i := range s.memberList() {
			voters = append(voters, s.c.Replicas[i].ID+"/Voter")
		}
		if slices.Sort(voters); !slices.Equal(down, voters) {
			short = append(short, fmt.Sprintf("scale-down: configuration %v, want voters %v", down, voters))
		}
	}
	minDownloads := int64(s.cfg.duration.Seconds() * minDownloadsPerSecond)
	if d := s.n.downloads.Load(); d < minDownloads {
		short = append(short, fmt.Sprintf("%d downloads digest-checked, want at least %d", d, minDownloads))
	}
	minFinal := int64(len(s.memberList()) * (s.cfg.repos + 1))
	if f := s.n.finalChecks.Load(); f < minFinal {
		short = append(short, fmt.Sprintf("the final check read %d artifacts intact from the replicas' own stores, want at least %d (sources times replicas)", f, minFinal))
	}
	fmt.Printf("checked: faults that took effect %s (each ≥ 1); leader killed or cut off %s; scaling %s; %d downloads digest-checked (≥ %d); final check %d artifacts intact in the replicas' own stores (≥ %d); %d minority checks, %d held artifacts served by the replica hit\n",
		strings.Join(ran, ", "), leaderHit, scaling, s.n.downloads.Load(), minDownloads, s.n.finalChecks.Load(), minFinal,
		s.n.minorityChecks.Load(), s.n.heldChecked.Load())
	return short
}

// distribution is "n=… min/median/p90/max".
func distribution(ds []time.Duration) string {
	if len(ds) == 0 {
		return "n=0"
	}
	ds = append([]time.Duration(nil), ds...)
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1)+0.5)].Round(10 * time.Millisecond) }
	return fmt.Sprintf("n=%d min/median/p90/max %v/%v/%v/%v", len(ds), q(0), q(0.5), q(0.9), q(1))
}

// dump writes each replica's log tail and /v1/cluster answer, the events
// and the problems into a directory named after the test.
func (s *suite) dump() {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(s.t.Name())
	var dir string
	var err error
	if out := os.Getenv("CHAOS_OUT"); out != "" {
		dir = filepath.Join(out, name+"-"+time.Now().Format("20060102-150405"))
		err = os.MkdirAll(dir, 0o750)
	} else {
		dir, err = os.MkdirTemp("", "sourceraft-chaos-"+name+"-")
	}
	if err != nil {
		s.t.Logf("dump: %v", err)
		return
	}
	s.mu.Lock()
	meta := fmt.Sprintf("test %s\nseed %d (replay with CHAOS_SEED=%d)\nreplicas %d\nduration %v\n",
		s.t.Name(), s.seed, s.seed, s.cfg.replicas, s.cfg.duration)
	files := map[string]string{
		"run.txt":        meta,
		"problems.txt":   strings.Join(s.problems, "\n") + "\n",
		"events.txt":     strings.Join(s.events, "\n") + "\n",
		"put-errors.txt": strings.Join(s.putErrors, "\n") + "\n",
	}
	var terms []string
	for term, ids := range s.leaders {
		var l []string
		for id := range ids {
			l = append(l, id)
		}
		sort.Strings(l)
		terms = append(terms, fmt.Sprintf("%d %s", term, strings.Join(l, ",")))
	}
	sort.Strings(terms)
	files["leaders.txt"] = strings.Join(terms, "\n") + "\n"
	for name, dump := range s.stacks {
		files[name] = dump
	}
	s.mu.Unlock()
	if s.c != nil {
		for i, r := range s.c.Replicas {
			s.c.Resume(i)
			b, _ := os.ReadFile(filepath.Join(r.Dir, "log"))
			if len(b) > 2<<20 {
				b = b[len(b)-2<<20:]
			}
			files[r.ID+".log"] = string(b)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			st, err := s.c.Status(ctx, i)
			cancel()
			if err != nil {
				files[r.ID+".cluster.json"] = fmt.Sprintf("{\"error\": %q}\n", err.Error())
			} else {
				files[r.ID+".cluster.json"] = statusJSON(st)
			}
		}
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o640); err != nil {
			s.t.Logf("dump: %v", err)
		}
	}
	s.t.Logf("chaos dump: %s", dir)
	fmt.Printf("chaos dump: %s\n", dir)
}

func statusJSON(st clusterapi.Status) string {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Sprintf("{\"error\": %q}\n", err.Error())
	}
	return string(b) + "\n"
}
