package clusterapi

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/sourceraft/sourceraft/fsm"
)

// The JSON replicas sent before this package existed (raftstore's and
// httpapi's types, marshalled). A rolling upgrade mixes old and new
// replicas, so each must decode to the value it was made from and encode
// back to the same bytes.
var wireShapes = []struct {
	name string
	json string
	into func() any
	want any
}{
	{
		name: "leader status",
		json: `{"nodeID":"replica-0","state":"Leader","leaderID":"replica-0","leaderAddr":"10.0.0.1:7000","term":7,"appliedIndex":120,"commitIndex":121,"lastIndex":122,"peers":[{"id":"replica-0","raftAddr":"10.0.0.1:7000","apiAddr":"10.0.0.1:9091","storageAddr":"10.0.0.1:9090","suffrage":"Voter","leader":true},{"id":"replica-1","raftAddr":"10.0.0.2:7000","suffrage":"Nonvoter","leader":false}],"artifacts":3,"bytes":4096,"blobs":2,"blobBytes":2048,"integrity":{"verified":5,"corrupt":1,"repaired":1},"uploads":1,"fsmError":"no space left on device","logError":"disk full"}`,
		into: func() any { return new(Status) },
		want: &Status{NodeID: "replica-0", State: "Leader", LeaderID: "replica-0", LeaderAddr: "10.0.0.1:7000", Term: 7,
			AppliedIndex: 120, CommitIndex: 121, LastIndex: 122,
			Peers: []Peer{
				{ID: "replica-0", RaftAddr: "10.0.0.1:7000", APIAddr: "10.0.0.1:9091", StorageAddr: "10.0.0.1:9090", Suffrage: "Voter", Leader: true},
				{ID: "replica-1", RaftAddr: "10.0.0.2:7000", Suffrage: "Nonvoter"},
			},
			Artifacts: 3, Bytes: 4096, Blobs: 2, BlobBytes: 2048, Integrity: fsm.IntegrityStats{Verified: 5, Corrupt: 1, Repaired: 1},
			Uploads: 1, FSMError: "no space left on device", LogError: "disk full"},
	},
	{
		name: "empty follower status",
		json: `{"nodeID":"replica-2","state":"Follower","leaderID":"","leaderAddr":"","term":0,"appliedIndex":0,"commitIndex":0,"lastIndex":0,"peers":null,"artifacts":0,"bytes":0,"blobs":0,"blobBytes":0,"integrity":{"verified":0,"corrupt":0,"repaired":0},"uploads":0}`,
		into: func() any { return new(Status) },
		want: &Status{NodeID: "replica-2", State: "Follower"},
	},
	{
		name: "fresh registration",
		json: `{"id":"replica-3","raftAddr":"10.0.0.4:7000","apiAddr":"10.0.0.4:9091","storageAddr":"10.0.0.4:9090","suffrage":"","leader":false,"fresh":true}`,
		into: func() any { return new(Peer) },
		want: &Peer{ID: "replica-3", RaftAddr: "10.0.0.4:7000", APIAddr: "10.0.0.4:9091", StorageAddr: "10.0.0.4:9090", Fresh: true},
	},
	{
		name: "content hash",
		json: `{"nodeID":"replica-1","appliedIndex":120,"hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}`,
		into: func() any { return new(ContentHash) },
		want: &ContentHash{NodeID: "replica-1", AppliedIndex: 120, Hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
	},
	{
		name: "put result",
		json: `{"path":"gitrepository/default/app/sha.tar.gz","digest":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","size":3,"revision":"main@sha1:abc","url":"http://source-controller.flux-system.svc/gitrepository/default/app/sha.tar.gz"}`,
		into: func() any { return new(PutResult) },
		want: &PutResult{Path: "gitrepository/default/app/sha.tar.gz", Digest: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
			Size: 3, Revision: "main@sha1:abc", URL: "http://source-controller.flux-system.svc/gitrepository/default/app/sha.tar.gz"},
	},
}

func TestWireShapesStable(t *testing.T) {
	for _, c := range wireShapes {
		got := c.into()
		if err := json.Unmarshal([]byte(c.json), got); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: decoded %+v, want %+v", c.name, got, c.want)
		}
		out, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != c.json {
			t.Errorf("%s: encodes as\n%s\nreplicas sent\n%s", c.name, out, c.json)
		}
	}
}

// A replica newer than this one may add fields; they must not fail the
// decoding of what this one knows.
func TestWireIgnoresNewerFields(t *testing.T) {
	var p Peer
	if err := json.Unmarshal([]byte(`{"id":"replica-5","raftAddr":"r5:7000","zone":"b","leader":true}`), &p); err != nil {
		t.Fatal(err)
	}
	if p != (Peer{ID: "replica-5", RaftAddr: "r5:7000", Leader: true}) {
		t.Errorf("decoded %+v", p)
	}
}

func TestStatusLeader(t *testing.T) {
	s := Status{Peers: []Peer{{ID: "a"}, {ID: "b", Leader: true}}}
	if l, ok := s.Leader(); !ok || l.ID != "b" {
		t.Errorf("leader %+v %v", l, ok)
	}
	s.Peers[1].Leader = false
	if _, ok := s.Leader(); ok {
		t.Error("a leader without any peer marked so")
	}
}
