package chaos

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"
)

// retentionMargin absorbs the time between the leader choosing "now" for
// a garbage collection and the test noticing its effect.
const retentionMargin = 5 * time.Second

// tracker knows every artifact the test has seen committed (named by a
// GitRepository status, or acknowledged with 201 by the internal API) and
// the history of each source object, to decide whether retention allows
// an artifact to be gone.
//
// An object's history is the sequence of its writes in order: Git pushes
// for a GitRepository, PUT attempts for an internal-API object. A write is
// appended before it starts, whether it later succeeds or not, so the
// number of writes newer than an artifact bounds from above the number of
// newer artifacts the store may hold, and the write's start time bounds
// from below the artifact's LastUpdateTime. With --artifact-retention-records
// R and TTL T, an artifact is then protected (must still be served) when
// no write came after it, or fewer than R did and it is younger than T
// (less a margin). Both bounds err on the side of "may be gone".
type tracker struct {
	records int
	ttl     time.Duration

	mu      sync.Mutex
	arts    map[string]*artifactRec // path → artifact
	objs    map[string]*history     // object → writes
	current map[string]string       // object → path of its newest committed artifact
	paths   []string                // every path in arts, for random picks
}

type artifactRec struct {
	path, digest, object string
	seq                  int // index of the write in the object's history
	firstSeen            time.Time
}

type history struct {
	starts []time.Time
	shas   map[string]int // git commit → seq
}

func newTracker(records int, ttl time.Duration) *tracker {
	return &tracker{records: records, ttl: ttl, arts: map[string]*artifactRec{},
		objs: map[string]*history{}, current: map[string]string{}}
}

func (tr *tracker) hist(object string) *history {
	h := tr.objs[object]
	if h == nil {
		h = &history{shas: map[string]int{}}
		tr.objs[object] = h
	}
	return h
}

// beginWrite records that a write of object starts now and returns its seq.
func (tr *tracker) beginWrite(object string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	h := tr.hist(object)
	h.starts = append(h.starts, time.Now())
	return len(h.starts) - 1
}

// pushed names the commit a Git write produced.
func (tr *tracker) pushed(object string, seq int, sha string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.hist(object).shas[sha] = seq
}

// commitSeq returns the seq of a pushed commit.
func (tr *tracker) commitSeq(object, sha string) (int, bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	seq, ok := tr.hist(object).shas[sha]
	return seq, ok
}

// committed records an artifact as committed with its digest and makes it
// its object's current one when no newer one is known. A path seen again
// with another digest is returned as an error: artifacts are immutable and
// archives deterministic.
func (tr *tracker) committed(object, path, digest string, seq int) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if a, ok := tr.arts[path]; ok {
		if a.digest != digest {
			return fmt.Errorf("%s was committed with digest %s, now named with %s", path, a.digest, digest)
		}
	} else {
		tr.arts[path] = &artifactRec{path: path, digest: digest, object: object, seq: seq, firstSeen: time.Now()}
		tr.paths = append(tr.paths, path)
	}
	if cur, ok := tr.arts[tr.current[object]]; !ok || cur.seq <= seq {
		tr.current[object] = path
	}
	return nil
}

// protected reports whether retention still requires path to be served.
func (tr *tracker) protected(path string, now time.Time) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	a, ok := tr.arts[path]
	if !ok {
		return false
	}
	h := tr.objs[a.object]
	newer := len(h.starts) - 1 - a.seq
	if newer <= 0 {
		return true
	}
	return newer < tr.records && now.Sub(h.starts[a.seq]) < tr.ttl-retentionMargin
}

// pick returns a random artifact: a current one most of the time, else any
// seen so far (older ones exercise retention).
func (tr *tracker) pick(rng *rand.Rand) (artifactRec, bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.paths) == 0 {
		return artifactRec{}, false
	}
	if rng.IntN(10) < 8 && len(tr.current) > 0 {
		objs := make([]string, 0, len(tr.current))
		for o := range tr.current {
			objs = append(objs, o)
		}
		sort.Strings(objs)
		return *tr.arts[tr.current[objs[rng.IntN(len(objs))]]], true
	}
	return *tr.arts[tr.paths[rng.IntN(len(tr.paths))]], true
}

// snapshot returns every artifact known, sorted by path.
func (tr *tracker) snapshot() []artifactRec {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make([]artifactRec, 0, len(tr.arts))
	for _, a := range tr.arts {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}
