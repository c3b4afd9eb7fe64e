package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/gitserver"
)

// httpClient downloads artifacts; every request carries its own deadline.
var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}}

// forwardedHeader asks a replica to answer from its own store only, never
// from a peer (see httpapi): how the final check reads each store.
const forwardedHeader = "X-Sourceraft-Forwarded"

// counters are the figures of the summary lines.
type counters struct {
	// ran counts the faults of each kind that took effect: replicas
	// signalled (kill, pause), a replica cut off, a disk fill the replica
	// hit (its status reported the failed write), a rolling restart done.
	ran                                       [numFaults]atomic.Int64
	kills, leaderKills                        atomic.Int64 // replicas killed
	partitions, leaderPartitions, diskFills   atomic.Int64
	minorityChecks, heldChecked               atomic.Int64
	downloads, failed, mismatches, lost, gone atomic.Int64
	spur, retried                             atomic.Int64
	// finalChecks are the artifacts the final check read from a replica's
	// own store with the expected digest.
	finalChecks                                   atomic.Int64
	commits, puts, putsAcked, statusDigestChanged atomic.Int64
}

// gitRepo is one Git repository under load with its GitRepository.
type gitRepo struct {
	name, object string
	repo         *gitserver.Repo
	files        []string
}

func (s *suite) newGitRepo(name string) (*gitRepo, error) {
	repo, err := s.git.NewRepo(name, filepath.Join(s.t.TempDir(), name))
	if err != nil {
		return nil, err
	}
	g := &gitRepo{name: name, object: "gitrepository/" + s.ns + "/" + name + "/", repo: repo}
	for f := 0; f < 8; f++ {
		g.files = append(g.files, fmt.Sprintf("data/%02d.txt", f))
	}
	return g, nil
}

// commit pushes a commit changing a few files with seeded content and
// returns its SHA. The write is recorded before the push starts.
func (s *suite) commit(g *gitRepo, rng *rand.Rand, all bool) (string, error) {
	files := map[string]string{"deploy/config.yaml": fmt.Sprintf("name: %s\nstamp: %d\n", g.name, rng.Uint64())}
	for _, f := range g.files {
		if all || rng.IntN(4) == 0 {
			files[f] = randomText(rng, 1<<10+rng.IntN(15<<10))
		}
	}
	seq := s.tr.beginWrite(g.object)
	sha, err := g.repo.Commit(fmt.Sprintf("change %d", seq), files)
	if err != nil {
		return "", err
	}
	s.tr.pushed(g.object, seq, sha)
	s.n.commits.Add(1)
	return sha, nil
}

// committer keeps pushing commits to g until stop, at most max of them.
func (s *suite) committer(g *gitRepo, rng *rand.Rand, max int) {
	for i := 0; i < max; i++ {
		if !s.sleep(time.Duration(1000+rng.IntN(3000)) * time.Millisecond) {
			return
		}
		if _, err := s.commit(g, rng, false); err != nil {
			s.problem("push to %s: %v", g.name, err)
			return
		}
	}
}

// createGitRepository creates the GitRepository reconciling g.
func (s *suite) createGitRepository(ctx context.Context, g *gitRepo, interval time.Duration) error {
	obj := &sourcev1.GitRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: g.name},
		Spec: sourcev1.GitRepositorySpec{
			URL:       s.gitURL + strings.TrimPrefix(g.repo.URL, s.git.URL),
			Interval:  metav1.Duration{Duration: interval},
			Timeout:   &metav1.Duration{Duration: 20 * time.Second},
			Reference: &sourcev1.GitRepositoryRef{Branch: "master"},
		},
	}
	return env.Client.Create(ctx, obj)
}

// watchStatuses records every artifact a Ready GitRepository names, until stop.
func (s *suite) watchStatuses(ctx context.Context) {
	for s.sleep(200 * time.Millisecond) {
		s.observeStatuses(ctx)
	}
}

// observeStatuses lists the GitRepositories once and records what their
// statuses name. It returns the Ready revision of each.
func (s *suite) observeStatuses(ctx context.Context) map[string]string {
	var list sourcev1.GitRepositoryList
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := env.Client.List(lctx, &list, client.InNamespace(s.ns)); err != nil {
		return nil
	}
	ready := map[string]string{}
	for _, o := range list.Items {
		a := o.Status.Artifact
		if a == nil {
			continue
		}
		object := "gitrepository/" + s.ns + "/" + o.Name + "/"
		sha, ok := strings.CutPrefix(a.Revision, "master@sha1:")
		if !ok {
			s.problem("%s: unexpected revision %q", o.Name, a.Revision)
			continue
		}
		seq, ok := s.tr.commitSeq(object, sha)
		if !ok {
			continue // pushed a moment ago and not yet recorded: next round
		}
		u, err := url.Parse(a.URL)
		if err != nil || len(u.Path) < 2 {
			s.problem("%s: artifact URL %q: %v", o.Name, a.URL, err)
			continue
		}
		if err := s.tr.committed(object, u.Path[1:], a.Digest, seq); err != nil {
			s.n.statusDigestChanged.Add(1)
			s.n.mismatches.Add(1)
			s.problem("%s: %v", o.Name, err)
		}
		if c := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition); c != nil && c.Status == metav1.ConditionTrue {
			ready[o.Name] = a.Revision
		}
	}
	return ready
}

// putter stores blobs through the internal API of random replicas, one
// object after the other, until stop or max attempts.
func (s *suite) putter(ctx context.Context, rng *rand.Rand, objects, max int) {
	for i := 0; i < max; i++ {
		if !s.sleep(time.Duration(150+rng.IntN(350)) * time.Millisecond) {
			return
		}
		object := fmt.Sprintf("ocirepository/chaos-put/obj-%d/", i%objects)
		size := 1<<10 + rng.IntN(96<<10)
		if rng.IntN(10) == 0 {
			size = 600<<10 + rng.IntN(600<<10) // several 512 KiB chunks
		}
		body := make([]byte, size)
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		seq := s.tr.beginWrite(object)
		path := fmt.Sprintf("%srev-%d.tar.gz", object, seq)
		members := s.memberList()
		replica := members[rng.IntN(len(members))]
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := s.c.Put(pctx, replica, path, bytes.NewReader(body), int64(len(body)))
		cancel()
		s.n.puts.Add(1)
		if err != nil {
			// Outcome unknown: counted as a newer write all the same.
			s.putFailed(fmt.Sprintf("PUT %s via %s: %v", path, s.c.Replicas[replica].ID, err))
			continue
		}
		s.n.putsAcked.Add(1)
		want := digestOf(body)
		if res.Digest != want {
			s.n.mismatches.Add(1)
			s.problem("PUT %s via %s answered digest %s, want %s", path, s.c.Replicas[replica].ID, res.Digest, want)
			continue
		}
		_ = s.tr.committed(object, path, want, seq)
	}
}

// putFailed keeps a PUT failure for the report: during an election the
// internal API may refuse writes, which is allowed.
func (s *suite) putFailed(msg string) {
	msg = fmt.Sprintf("%8.3fs %s", time.Since(s.start).Seconds(), msg)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putErrors = append(s.putErrors, msg)
}

// consumer downloads random committed artifacts as a Flux consumer behind
// a Service would: replicas in a random order, the next one on failure.
func (s *suite) consumer(ctx context.Context, rng *rand.Rand, max int, pace time.Duration) {
	for i := 0; i < max; i++ {
		if !s.sleep(pace) {
			return
		}
		a, ok := s.tr.pick(rng)
		if !ok {
			continue
		}
		s.download(ctx, rng, a)
	}
}

type outcome int

const (
	served outcome = iota
	notFound
	unavailable
)

// download fetches a from the replicas in a random order until one serves
// it. When none does and none answers 404 (replicas down, or answering 503
// "not applied here and some peers are unreachable" with Retry-After while
// a new leader is elected), it retries every second for up to
// downloadPatience, as Flux's fetcher (retryablehttp) would, and then
// counts as failed. A 404 ends the download: an artifact retention
// protects, or a status still names, must never get one.
func (s *suite) download(ctx context.Context, rng *rand.Rand, a artifactRec) {
	start := time.Now()
	for round := 0; ; round++ {
		var notFoundAt, errs []string
		members := s.memberList()
		for _, k := range rng.Perm(len(members)) {
			i := members[k]
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			digest, res, err := fetch(actx, s.c.ArtifactURL(i, a.path), false)
			cancel()
			if ctx.Err() != nil {
				return
			}
			switch res {
			case served:
				s.n.downloads.Add(1)
				if digest != a.digest {
					s.n.mismatches.Add(1)
					s.problem("%s served %s with digest %s, want %s", s.c.Replicas[i].ID, a.path, digest, a.digest)
				}
				if len(notFoundAt) > 0 && s.tr.protected(a.path, time.Now()) {
					s.n.spur.Add(1)
					s.problem("spurious 404: %v answered 404 for %s, %s served it", notFoundAt, a.path, s.c.Replicas[i].ID)
				}
				if round > 0 {
					s.waited(time.Since(start))
				}
				return
			case notFound:
				notFoundAt = append(notFoundAt, s.c.Replicas[i].ID)
			default:
				errs = append(errs, fmt.Sprintf("%s: %v", s.c.Replicas[i].ID, err))
			}
		}
		// Only a 404 says an artifact is gone: a replica answers it once it
		// has applied what is committed (or its leader said so), so the
		// collection is in the replicated state. A 503 from every replica
		// decides nothing, whatever the statuses say: retried, then failed.
		switch {
		case len(notFoundAt) > 0 && s.tr.protected(a.path, time.Now()):
			s.n.lost.Add(1)
			s.problem("lost: %s (committed, still within retention) answered 404 by %v; errors %v", a.path, notFoundAt, errs)
			return
		case len(notFoundAt) > 0 && s.stillNamed(ctx, a):
			s.n.lost.Add(1)
			s.problem("lost: %s answered 404 by %v while its GitRepository status still names it 1s later", a.path, notFoundAt)
			return
		case len(notFoundAt) > 0:
			s.n.gone.Add(1) // superseded and collected: allowed
			return
		case time.Since(start) > downloadPatience:
			s.n.failed.Add(1)
			s.problem("download of %s failed on every replica for %v: %v", a.path, time.Since(start).Round(time.Millisecond), errs)
			return
		}
		if round == 0 {
			s.n.retried.Add(1)
		}
		if !s.sleep(time.Second) {
			return
		}
	}
}

// stillNamed reports whether a's GitRepository status names a now and
// still does a second later (a reconcile may collect the artifact a
// moment before its status patch names the new one): whatever retention
// says, the artifact a status names must be served.
func (s *suite) stillNamed(ctx context.Context, a artifactRec) bool {
	name, ok := strings.CutPrefix(a.object, "gitrepository/"+s.ns+"/")
	if !ok {
		return false
	}
	name = strings.TrimSuffix(name, "/")
	for i := 0; i < 2; i++ {
		if i > 0 && !s.sleep(time.Second) {
			return false
		}
		var o sourcev1.GitRepository
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := env.Client.Get(gctx, client.ObjectKey{Namespace: s.ns, Name: name}, &o)
		cancel()
		if err != nil || o.Status.Artifact == nil {
			return false
		}
		u, err := url.Parse(o.Status.Artifact.URL)
		if err != nil || strings.TrimPrefix(u.Path, "/") != a.path {
			return false
		}
	}
	return true
}

// downloadPatience is how long a download retries while every replica
// fails: a few election timeouts.
const downloadPatience = 15 * time.Second

// waited records how long a download that needed retries took.
func (s *suite) waited(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waits = append(s.waits, d)
}

// fetch downloads url and returns the digest of the body. local asks the
// replica to answer from its own store only.
func fetch(ctx context.Context, url string, local bool) (string, outcome, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", unavailable, err
	}
	if local {
		req.Header.Set(forwardedHeader, "chaos-verify")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", unavailable, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return "", notFound, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", unavailable, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return "", unavailable, fmt.Errorf("body cut after %d bytes: %w", n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return "", unavailable, fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), served, nil
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func randomText(rng *rand.Rand, n int) string {
	b := make([]byte, n/2)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return hex.EncodeToString(b)
}
