package chaos

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// verifyReconciled pushes one last commit to every repository and waits
// until every source is Ready at it: reconciliation survived the faults.
func (s *suite) verifyReconciled(ctx context.Context) {
	rng := s.rng(3)
	want := map[string]string{}
	for _, g := range append([]*gitRepo{s.probe}, s.repos...) {
		sha, err := s.commit(g, rng, false)
		if err != nil {
			s.problem("final push to %s: %v", g.name, err)
			return
		}
		want[g.name] = "master@sha1:" + sha
	}
	pushed := time.Now()
	deadline := pushed.Add(90 * time.Second)
	for {
		ready := s.observeStatuses(ctx)
		var behind []string
		for name, rev := range want {
			if ready[name] != rev {
				behind = append(behind, fmt.Sprintf("%s at %q want %q", name, ready[name], rev))
			}
		}
		if len(behind) == 0 {
			s.event("every source Ready at its last commit %v after the push", time.Since(pushed).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(behind)
			s.problem("sources not Ready at their last commit 90s after the push: %s", strings.Join(behind, "; "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// verifyConverged suspends the sources so nothing new is written, then
// waits until every replica has applied the same index, the leader's
// commit index, and holds the same artifact count, bytes and uploads; at
// one applied index their whole stores must hash the same.
func (s *suite) verifyConverged(ctx context.Context) {
	var list sourcev1.GitRepositoryList
	if err := env.Client.List(ctx, &list, client.InNamespace(s.ns)); err != nil {
		s.problem("list sources: %v", err)
	}
	for i := range list.Items {
		o := &list.Items[i]
		patch := client.MergeFrom(o.DeepCopy())
		o.Spec.Suspend = true
		if err := env.Client.Patch(ctx, o, patch); err != nil {
			s.problem("suspend %s: %v", o.Name, err)
		}
	}
	t0 := time.Now()
	deadline := t0.Add(90 * time.Second)
	var last string
	for {
		sts, err := s.statuses(ctx)
		if err == nil {
			if last = differences(sts); last == "" {
				last, err = s.sameContent(ctx)
			}
			if err != nil {
				s.mu.Lock()
				s.converged = "DIVERGED"
				s.mu.Unlock()
				s.problem("%v", err)
				return
			}
			if last == "" {
				s.mu.Lock()
				s.converged = "converged"
				s.mu.Unlock()
				s.event("converged %v after suspending: applied index %d, %d artifacts, %d bytes on every replica",
					time.Since(t0).Round(time.Millisecond), sts[0].AppliedIndex, sts[0].Artifacts, sts[0].Bytes)
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			s.mu.Lock()
			s.converged = "NOT converged"
			s.mu.Unlock()
			s.problem("replicas not converged 90s after the load stopped: %s", last)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sameContent compares the members' content hashes: an error when two
// replicas at one applied index hash differently, a description when they
// are at different indexes (the leader's GC applied meanwhile), "" when
// every store is the same.
func (s *suite) sameContent(ctx context.Context) (string, error) {
	var hs []clusterapi.ContentHash
	for _, i := range s.memberList() {
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		h, err := s.c.ContentHash(hctx, i)
		cancel()
		if err != nil {
			return err.Error(), nil
		}
		hs = append(hs, h)
	}
	var diff []string
	for _, h := range hs {
		diff = append(diff, fmt.Sprintf("%s at %d: %.12s", h.NodeID, h.AppliedIndex, h.Hash))
		if h.AppliedIndex != hs[0].AppliedIndex {
			return "content hashes at different indexes: " + strings.Join(diff, ", "), nil
		}
	}
	for _, h := range hs {
		if h.Hash != hs[0].Hash {
			return "", fmt.Errorf("stores differ at one applied index: %s", strings.Join(diff, ", "))
		}
	}
	s.event("content hash %.12s… on every replica at applied index %d", hs[0].Hash, hs[0].AppliedIndex)
	return "", nil
}

func (s *suite) statuses(ctx context.Context) ([]clusterapi.Status, error) {
	var out []clusterapi.Status
	for _, i := range s.memberList() {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := s.c.Status(sctx, i)
		cancel()
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// differences describes how the replicas' states differ, "" if they do not.
func differences(sts []clusterapi.Status) string {
	var commit uint64
	leaders := 0
	for _, st := range sts {
		if st.State == "Leader" {
			leaders++
			commit = st.CommitIndex
		}
	}
	if leaders != 1 {
		return fmt.Sprintf("%d leaders", leaders)
	}
	var diff []string
	for _, st := range sts {
		if st.AppliedIndex != commit || st.Artifacts != sts[0].Artifacts || st.Bytes != sts[0].Bytes || st.Uploads != sts[0].Uploads ||
			st.FSMError != "" || st.LogError != "" {
			diff = append(diff, fmt.Sprintf("%s applied %d/%d artifacts %d bytes %d uploads %d fsmError %q logError %q",
				st.NodeID, st.AppliedIndex, commit, st.Artifacts, st.Bytes, st.Uploads, st.FSMError, st.LogError))
		}
	}
	if len(diff) == 0 {
		return ""
	}
	for _, st := range sts {
		diff = append(diff, fmt.Sprintf("[%s: applied %d artifacts %d bytes %d uploads %d]", st.NodeID, st.AppliedIndex, st.Artifacts, st.Bytes, st.Uploads))
	}
	return strings.Join(diff, "; ")
}

// verifyStores reads every replica's own store (no forwarding to peers):
// each artifact retention still protects must be there with its digest;
// for a sample of the others, every replica must agree on whether it
// exists.
func (s *suite) verifyStores(ctx context.Context) {
	now := time.Now()
	var required, others []artifactRec
	for _, a := range s.tr.snapshot() {
		if s.tr.protected(a.path, now) {
			required = append(required, a)
		} else {
			others = append(others, a)
		}
	}
	rng := s.rng(4)
	rng.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	if len(others) > 20 {
		others = others[:20]
	}
	type result struct {
		digest string
		res    outcome
		err    error
	}
	members := s.memberList()
	n := len(members)
	all := append(append([]artifactRec(nil), required...), others...)
	results := make([][]result, len(all))
	for k := range results {
		results[k] = make([]result, n)
	}
	jobs := make(chan [2]int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				d, res, err := fetch(fctx, s.c.ArtifactURL(members[j[1]], all[j[0]].path), true)
				cancel()
				results[j[0]][j[1]] = result{d, res, err}
			}
		}()
	}
	for k := range all {
		for i := 0; i < n; i++ {
			jobs <- [2]int{k, i}
		}
	}
	close(jobs)
	wg.Wait()

	diverged := false
	for k, a := range all {
		mustHave := k < len(required)
		var have, missing []string
		for i, r := range results[k] {
			id := s.c.Replicas[members[i]].ID
			switch {
			case r.res == served && r.digest != a.digest:
				s.n.mismatches.Add(1)
				s.problem("final check: %s holds %s with digest %s, want %s", id, a.path, r.digest, a.digest)
			case r.res == served:
				s.n.finalChecks.Add(1)
				have = append(have, id)
			case r.res == notFound:
				missing = append(missing, id)
			default:
				s.problem("final check: %s: GET %s: %v", id, a.path, r.err)
			}
		}
		switch {
		case mustHave && len(missing) > 0:
			s.n.lost.Add(1)
			s.problem("final check: %s (still within retention) missing on %v", a.path, missing)
		case len(have) > 0 && len(missing) > 0:
			diverged = true
			s.problem("final check: stores differ: %s held by %v, missing on %v", a.path, have, missing)
		}
	}
	if diverged {
		s.mu.Lock()
		s.converged = "DIVERGED"
		s.mu.Unlock()
	}
	s.event("final check: %d protected artifacts and %d others read from each replica's own store", len(required), len(others))
}

// verifyTerms checks that no term had two leaders.
func (s *suite) verifyTerms() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for term, ids := range s.leaders {
		if len(ids) > 1 {
			var l []string
			for id := range ids {
				l = append(l, id)
			}
			sort.Strings(l)
			s.problems = append(s.problems, fmt.Sprintf("term %d had %d leaders: %v", term, len(l), l))
		}
	}
}

// bucketRef is the MinIO bucket of a CHAOS_BACKEND=s3 run.
type bucketRef struct {
	srv  *minioserver.Server
	name string
}

// verifyBucket checks, under CHAOS_BACKEND=s3, that the blob of every
// artifact retention protects is an object of the bucket with its size,
// and that no replica keeps blob files: the bytes live in the bucket only.
func (s *suite) verifyBucket(ctx context.Context) {
	if s.bucket == nil {
		return
	}
	now := time.Now()
	checked := 0
	for _, a := range s.tr.snapshot() {
		if !s.tr.protected(a.path, now) {
			continue
		}
		key := "sha256/" + strings.TrimPrefix(a.digest, "sha256:")
		if _, err := s.bucket.srv.Client.StatObject(ctx, s.bucket.name, key, minio.StatObjectOptions{}); err != nil {
			s.n.lost.Add(1)
			s.problem("bucket: %s of %s: %v", key, a.path, err)
			continue
		}
		checked++
	}
	for _, i := range s.memberList() {
		r := s.c.Replicas[i]
		entries, err := os.ReadDir(filepath.Join(r.Dir, "data", "blobs", "sha256"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.problem("bucket: %s: %v", r.ID, err)
		}
		if len(entries) > 0 {
			s.problem("bucket: %s holds %d blob files with the s3 backend", r.ID, len(entries))
		}
	}
	s.event("bucket: %d protected artifacts' blobs are objects of %s; no replica holds blob files", checked, s.bucket.name)
}
