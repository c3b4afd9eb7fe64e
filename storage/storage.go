// Package storage holds the contract between the reconcilers, the HTTP
// layer and the replicated store: the Artifact record, the Storage
// interface, the pure garbage-collection policy the leader evaluates
// before proposing deletions, and the digest algorithms artifacts may be
// described in.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// MaxChunkSize is the largest blob chunk carried by one Raft log entry,
// the size hashicorp/raft suggests for a single entry.
const MaxChunkSize = 512 * 1024

var (
	// ErrNotFound is returned when no committed artifact has the path.
	ErrNotFound = errors.New("artifact not found")
	// ErrNotLeader is returned by writes on a replica that is not the Raft leader.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrTooLarge is returned when content exceeds the configured maximum artifact size.
	ErrTooLarge = errors.New("artifact exceeds the maximum size")
	// ErrDigestMismatch is returned when stored or uploaded bytes do not hash to the expected digest.
	ErrDigestMismatch = errors.New("artifact digest mismatch")
	// ErrCorrupt is returned when stored bytes fail their checksum on read.
	ErrCorrupt = errors.New("stored artifact data is corrupt")
	// ErrInvalidPath is returned for paths that are not <kind>/<namespace>/<name>/<file>,
	// and by writes for an unknown kind or a namespace or name Kubernetes would refuse.
	ErrInvalidPath = errors.New("invalid artifact path")
	// ErrIncomplete is returned when content ends other than cleanly, or
	// short of its declared length: a body cut short, a client gone, a
	// producer that failed halfway. Nothing is committed.
	ErrIncomplete = errors.New("artifact content incomplete")
)

// Kinds are the lower-case kinds of Flux's sources, the only first path
// segments a write accepts.
var Kinds = [...]string{"gitrepository", "helmrepository", "helmchart", "ocirepository", "bucket"}

// Artifact describes one stored artifact. Its Path is Flux's
// <kind>/<namespace>/<name>/<file> layout; Kind is the lower-case kind.
type Artifact struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	File      string `json:"file"`
	Revision  string `json:"revision,omitempty"`
	Digest    string `json:"digest,omitempty"`
	// BlobDigest is the sha256 digest ("sha256:<hex>") the content is
	// stored, deduplicated, verified and repaired under, when Digest is of
	// another algorithm (--artifact-digest-algo). Empty when Digest is
	// sha256 itself, as in every artifact stored before the flag existed.
	BlobDigest     string            `json:"blobDigest,omitempty"`
	Size           int64             `json:"size"`
	LastUpdateTime time.Time         `json:"lastUpdateTime"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	// ExpectedSize, when positive, is the content length a producer
	// declared (an HTTP Content-Length): Store refuses content of any
	// other length with ErrIncomplete. It is never stored.
	ExpectedSize int64 `json:"-"`
}

// Blob is the sha256 digest the artifact's content is stored under.
func (a Artifact) Blob() string {
	if a.BlobDigest != "" {
		return a.BlobDigest
	}
	return a.Digest
}

// Path returns the artifact's storage path, which is also its URL path.
func (a Artifact) Path() string {
	return a.Kind + "/" + a.Namespace + "/" + a.Name + "/" + a.File
}

// Object returns the path prefix shared by every artifact of one source object.
func (a Artifact) Object() string {
	return a.Kind + "/" + a.Namespace + "/" + a.Name + "/"
}

// URL returns the artifact's HTTP address on the given advertised host:port.
func (a Artifact) URL(advAddr string) string {
	return "http://" + advAddr + "/" + a.Path()
}

// AliasFile is the file name under which every replica serves an object's
// current artifact, where Flux's source-controller keeps a symlink to it:
// index.yaml for a HelmRepository, latest.tar.gz for every other kind.
func AliasFile(kind string) string {
	if kind == "helmrepository" {
		return "index.yaml"
	}
	return "latest.tar.gz"
}

// IsAlias reports whether the artifact's file is its object's alias name,
// which no stored artifact may take.
func (a Artifact) IsAlias() bool { return a.File == AliasFile(a.Kind) }

// ParsePath splits a storage path into an Artifact's identity fields and
// rejects anything that could name a file outside the store: empty or dot
// segments, backslashes, NUL bytes, and the wrong number of segments.
func ParsePath(p string) (Artifact, error) {
	p = strings.TrimPrefix(p, "/")
	parts := strings.Split(p, "/")
	if len(parts) != 4 {
		return Artifact{}, fmt.Errorf("%w: %q: want <kind>/<namespace>/<name>/<file>", ErrInvalidPath, p)
	}
	for _, s := range parts {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "\\\x00") || len(s) > 253 {
			return Artifact{}, fmt.Errorf("%w: %q: bad segment %q", ErrInvalidPath, p, s)
		}
	}
	if path.Clean("/"+p) != "/"+p {
		return Artifact{}, fmt.Errorf("%w: %q is not clean", ErrInvalidPath, p)
	}
	return Artifact{Kind: parts[0], Namespace: parts[1], Name: parts[2], File: parts[3]}, nil
}

// ParseWritePath is ParsePath plus the rules a new artifact must meet:
// one of Flux's Kinds, and a namespace and name as Kubernetes validates
// them (a DNS-1123 label and a DNS-1123 subdomain). Reads keep using
// ParsePath so that artifacts stored before these rules stay reachable.
func ParseWritePath(p string) (Artifact, error) {
	a, err := ParsePath(p)
	if err != nil {
		return Artifact{}, err
	}
	return a, a.ValidateNew()
}

// ValidateNew checks the identity of an artifact parsed by ParsePath
// against the rules of ParseWritePath, failing with ErrInvalidPath.
func (a Artifact) ValidateNew() error {
	var why string
	switch {
	case !slices.Contains(Kinds[:], a.Kind):
		why = fmt.Sprintf("kind %q is not one of %s", a.Kind, strings.Join(Kinds[:], ", "))
	case len(validation.IsDNS1123Label(a.Namespace)) > 0:
		why = fmt.Sprintf("namespace %q: %s", a.Namespace, strings.Join(validation.IsDNS1123Label(a.Namespace), "; "))
	case len(validation.IsDNS1123Subdomain(a.Name)) > 0:
		why = fmt.Sprintf("name %q: %s", a.Name, strings.Join(validation.IsDNS1123Subdomain(a.Name), "; "))
	default:
		return nil
	}
	return fmt.Errorf("%w: %q: %s", ErrInvalidPath, a.Path(), why)
}

// Filter selects artifacts in List. Empty fields match everything.
type Filter struct {
	Kind      string
	Namespace string
	Name      string
}

// Match reports whether the artifact passes the filter.
func (f Filter) Match(a Artifact) bool {
	return (f.Kind == "" || f.Kind == a.Kind) &&
		(f.Namespace == "" || f.Namespace == a.Namespace) &&
		(f.Name == "" || f.Name == a.Name)
}

// GCPolicy is Flux's artifact retention: per source object, artifacts older
// than TTL are removed and at most Records are kept, never the current one.
type GCPolicy struct {
	// Current names the artifact to keep for its object. When nil, every
	// object's newest artifact (by LastUpdateTime, then path) is current.
	Current *Artifact
	// TTL is how long a non-current artifact is retained; zero keeps none.
	TTL time.Duration
	// Records is how many artifacts per object are kept at most, current included.
	Records int
}

// Storage is what reconcilers and the internal API store artifacts through.
// Writes are replicated and return once a quorum committed them; reads are
// served from the local replica.
type Storage interface {
	// Store streams content into the store and fills a.Digest (in the
	// configured algorithm), a.BlobDigest and a.Size.
	Store(ctx context.Context, a *Artifact, content io.Reader) error
	Retrieve(ctx context.Context, a Artifact) (io.ReadCloser, error)
	Exists(ctx context.Context, a Artifact) (bool, error)
	Delete(ctx context.Context, a Artifact) error
	List(ctx context.Context, f Filter) ([]Artifact, error)
	GarbageCollect(ctx context.Context, p GCPolicy) error
}

// Key is an artifact's validated storage path: made once at the edge by
// ParseKey or KeyOf, then passed on without being parsed again.
type Key struct {
	path string
	id   Artifact
}

// ParseKey validates p as ParsePath does.
func ParseKey(p string) (Key, error) {
	a, err := ParsePath(p)
	if err != nil {
		return Key{}, err
	}
	return Key{path: a.Path(), id: a}, nil
}

// KeyOf validates the path of a.
func KeyOf(a Artifact) (Key, error) {
	return ParseKey(a.Path())
}

// String is the storage path, kind/namespace/name/file.
func (k Key) String() string { return k.path }

// Identity returns an Artifact with only the path's fields set.
func (k Key) Identity() Artifact { return k.id }
