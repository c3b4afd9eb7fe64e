package fsm

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// randomLogs returns n logs of valid and invalid commands drawn from a
// seeded source: uploads interleaved, committed complete or not, at shared
// paths and with shared contents, deleted, aborted and expired, mixed with
// node changes and non-command entries.
func randomLogs(t testing.TB, seed uint64, n int) []*raft.Log {
	rng := rand.New(rand.NewPCG(seed, 0))
	contents := make([][]byte, 5)
	for i := range contents {
		contents[i] = pattern(byte(i), rng.IntN(6000))
	}
	paths := make([]string, 6)
	for i := range paths {
		paths[i] = fmt.Sprintf("helmchart/ns%d/chart/%d.tgz", i%2, i)
	}
	type upload struct {
		id     string
		chunks [][]byte
		sent   int
		art    storage.Artifact
	}
	var (
		logs    []*raft.Log
		open    []*upload
		uploads int
	)
	add := func(typ raft.LogType, data []byte) {
		logs = append(logs, &raft.Log{Index: uint64(len(logs) + 1), Type: typ, Data: data})
	}
	pick := func() *upload { return open[rng.IntN(len(open))] }
	for len(logs) < n {
		r := rng.IntN(100)
		switch {
		case r < 12:
			uploads++
			content := contents[rng.IntN(len(contents))]
			u := &upload{id: fmt.Sprintf("up-%d", uploads), art: artifactAt(t, paths[rng.IntN(len(paths))], content)}
			size := 1 + rng.IntN(2000)
			for seq, off := 0, 0; off < len(content) || seq == 0; seq++ {
				k := min(size, len(content)-off)
				u.chunks = append(u.chunks, EncodeChunk(Chunk{UploadID: u.id, Seq: uint32(seq), StartedAt: int64(len(logs)), Data: content[off : off+k]}))
				off += k
			}
			add(raft.LogCommand, u.chunks[0])
			u.sent = 1
			open = append(open, u)
		case r < 55 && len(open) > 0:
			if u := pick(); u.sent < len(u.chunks) {
				add(raft.LogCommand, u.chunks[u.sent])
				u.sent++
			}
		case r < 70 && len(open) > 0:
			i := rng.IntN(len(open))
			u := open[i]
			if complete := u.sent == len(u.chunks); complete || rng.IntN(4) == 0 {
				add(raft.LogCommand, EncodeCommit(Commit{UploadID: u.id, Chunks: uint32(len(u.chunks)), Artifact: u.art}))
				if complete {
					open = append(open[:i], open[i+1:]...)
				}
			}
		case r < 75:
			add(raft.LogCommand, EncodeDeleteArtifacts([]string{paths[rng.IntN(len(paths))], "helmchart/ns/none/x.tgz"}))
		case r < 77 && len(open) > 0:
			add(raft.LogCommand, EncodeAbortUploads([]string{pick().id, "unknown"}))
		case r < 79:
			add(raft.LogCommand, EncodeExpireUploads(int64(max(0, len(logs)-150-rng.IntN(100)))))
		case r < 84:
			id := fmt.Sprint("node-", rng.IntN(3))
			add(raft.LogCommand, EncodeSetNode(Node{ID: id, RaftAddr: fmt.Sprint(id, ":", rng.IntN(100))}))
		case r < 86:
			add(raft.LogCommand, EncodeRemoveNode(fmt.Sprint("node-", rng.IntN(3))))
		case r < 90 && len(open) > 0:
			bad := EncodeChunk(Chunk{UploadID: pick().id, Seq: uint32(rng.IntN(4)), Data: []byte("xyz")})
			bad[len(bad)-1] ^= byte(rng.IntN(2)) // sometimes a checksum failure
			add(raft.LogCommand, bad)
		case r < 94:
			add(raft.LogConfiguration, []byte("configuration"))
		case r < 96:
			add(raft.LogNoop, nil)
		case r < 98:
			content := contents[rng.IntN(len(contents))]
			add(raft.LogCommand, EncodeCommitRemote(RemoteCommit{Artifact: artifactAt(t, paths[rng.IntN(len(paths))], content)}))
		case r < 99:
			add(raft.LogCommand, EncodeMoveBlobs([]string{digestOf(contents[rng.IntN(len(contents))])}))
		default:
			add(raft.LogCommand, EncodeForgetGarbage([]string{digestOf(contents[rng.IntN(len(contents))])}))
		}
		// Uploads expired, aborted or broken by the bad chunks above stay
		// open a while: their later chunks and commits are rejected.
		if len(open) > 8 {
			open = open[1:]
		}
	}
	return logs
}

func TestDeterminism(t *testing.T) {
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	seed := h.Sum64()
	logs := randomLogs(t, seed, 1500)

	type replica struct {
		name    string
		f       *FSM
		results []string
	}
	feed := func(r *replica, batch func() int, restartAt int) {
		for i := 0; i < len(logs); {
			k := min(batch(), len(logs)-i)
			for _, res := range r.f.ApplyBatch(logs[i : i+k]) {
				r.results = append(r.results, fmt.Sprint(res))
			}
			i += k
			if restartAt > 0 && i >= restartAt {
				restartAt = 0
				path := r.f.path
				if err := r.f.Close(); err != nil {
					t.Fatal(err)
				}
				r.f = openAt(t, path)
			}
		}
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	replicas := []*replica{{name: "one by one"}, {name: "one by one again"}, {name: "random batches"}, {name: "batches of 64, restarted"}}
	for _, r := range replicas {
		r.f = openAt(t, filepath.Join(t.TempDir(), "fsm.db"))
	}
	feed(replicas[0], func() int { return 1 }, 0)
	feed(replicas[1], func() int { return 1 }, 0)
	feed(replicas[2], func() int { return 1 + rng.IntN(40) }, 0)
	feed(replicas[3], func() int { return 64 }, len(logs)/2)

	var ok, failed int
	for _, res := range replicas[0].results {
		if res == "<nil>" {
			ok++
		} else {
			failed++
		}
	}
	if ok < 500 || failed < 50 {
		t.Fatalf("%d logs applied and %d rejected: the generator no longer covers both", ok, failed)
	}
	want := contentHash(t, replicas[0].f)
	checkInvariants(t, replicas[0].f)
	for _, r := range replicas[1:] {
		if got := contentHash(t, r.f); got != want {
			t.Errorf("%s: content hash %s, want %s", r.name, got, want)
		}
		if r.f.AppliedIndex() != uint64(len(logs)) {
			t.Errorf("%s: applied index %d, want %d", r.name, r.f.AppliedIndex(), len(logs))
		}
		for i := range r.results {
			if r.results[i] != replicas[0].results[i] {
				t.Errorf("%s: log %d: result %q, want %q", r.name, i+1, r.results[i], replicas[0].results[i])
				break
			}
		}
	}
	arts, err := replicas[0].f.List(storage.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(arts) == 0 {
		t.Fatal("no artifacts at the end: the generator deletes too much")
	}
	for _, a := range arts {
		if err := replicas[0].f.Verify(a.Digest); err != nil {
			t.Error(err)
		}
	}
}

// checkInvariants checks the references between buckets and files: every
// artifact's blob exists and counts it, the counters add up, every blob
// record has its file and every upload record its upload file, and no
// other file is left.
func checkInvariants(t *testing.T, f *FSM) {
	t.Helper()
	err := f.view(func(tx *bolt.Tx) error {
		refs := map[string]uint32{}
		var want counters
		err := tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			var a storage.Artifact
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			refs[a.Digest]++
			want.Artifacts++
			want.ArtifactBytes += a.Size
			return nil
		})
		if err != nil {
			return err
		}
		files := map[string]int64{}
		err = tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			b, err := decodeBlobRecord(v)
			if err != nil {
				return err
			}
			if refs[string(k)] != b.Refs {
				return fmt.Errorf("blob %s: %d refs, %d artifacts", k, b.Refs, refs[string(k)])
			}
			delete(refs, string(k))
			want.Blobs++
			want.BlobBytes += b.Size
			files[f.dirs.blob(string(k))] = b.Size
			return nil
		})
		if err != nil {
			return err
		}
		if len(refs) > 0 {
			return fmt.Errorf("artifacts without blobs: %v", refs)
		}
		if got, err := readCounters(tx); err != nil || got != want {
			return fmt.Errorf("counters %+v, records add up to %+v (%v)", got, want, err)
		}
		err = tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
			u, err := decodeUploadRecord(v)
			if err != nil {
				return err
			}
			files[f.dirs.upload(string(k))] = u.Bytes
			return nil
		})
		if err != nil {
			return err
		}
		for _, dir := range []string{f.dirs.sha256, f.dirs.uploads} {
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			for _, e := range entries {
				p := filepath.Join(dir, e.Name())
				size, ok := files[p]
				if !ok {
					return fmt.Errorf("file %s has no record", p)
				}
				if st, err := os.Stat(p); err != nil || st.Size() < size {
					return fmt.Errorf("file %s: %v, want %d bytes", p, err, size)
				}
				delete(files, p)
			}
		}
		if len(files) > 0 {
			return fmt.Errorf("records without files: %v", files)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
