package reconcilers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/storage"
)

// artifactStore is how reconcilers reach the replicated store: Storage and
// nothing else, plus the address artifact URLs name and the retention
// policy applied after each new artifact.
type artifactStore struct {
	storage.Storage
	// advAddr is the host:port written into artifact URLs.
	advAddr string
	// retention is the TTL and record count kept per object; Current is
	// set per collection.
	retention storage.GCPolicy
}

// newArtifactFor is the storage record of a new artifact of obj; kind is
// the Kubernetes kind, stored lower-case as Flux does.
func newArtifactFor(kind string, obj client.Object, revision, file string) storage.Artifact {
	return storage.Artifact{
		Kind: strings.ToLower(kind), Namespace: obj.GetNamespace(), Name: obj.GetName(),
		File: file, Revision: revision,
	}
}

// toStatus is the status form of a committed artifact.
func (s *artifactStore) toStatus(a storage.Artifact) *meta.Artifact {
	size := a.Size
	return &meta.Artifact{
		Path: a.Path(), URL: a.URL(s.advAddr), Revision: a.Revision, Digest: a.Digest,
		LastUpdateTime: metav1.NewTime(a.LastUpdateTime), Size: &size, Metadata: a.Metadata,
	}
}

// statusURL is the status.url of the kinds that have one, as Flux sets it:
// the object's alias (latest.tar.gz, a HelmRepository's index.yaml) beside
// its status artifact, which every replica serves as the current artifact
// whatever its revision; "" without an artifact.
func statusURL(a *meta.Artifact) string {
	if a == nil {
		return ""
	}
	kind, _, _ := strings.Cut(a.Path, "/")
	return a.URL[:strings.LastIndexByte(a.URL, '/')+1] + storage.AliasFile(kind)
}

// fromStatus is the storage identity of an artifact named in a status.
func fromStatus(m *meta.Artifact) (storage.Artifact, error) {
	a, err := storage.ParsePath(m.Path)
	if err != nil {
		return storage.Artifact{}, err
	}
	a.Revision, a.Digest, a.LastUpdateTime = m.Revision, m.Digest, m.LastUpdateTime.Time
	if m.Size != nil {
		a.Size = *m.Size
	}
	return a, nil
}

// errStoreEnded is what the archive writer sees when Store stopped reading.
var errStoreEnded = errors.New("store stopped reading the archive")

// errArchive marks failures of building the archive, as opposed to storing it.
var errArchive = errors.New("archive")

// storeDir archives dir and streams the archive into the store, which
// fills a.Digest and a.Size once the artifact is committed. The archive is
// never held in memory. An archive that cannot be built (a limit exceeded,
// an unreadable file) fails with an error matching errArchive before
// anything is proposed to the store.
func (s *artifactStore) storeDir(ctx context.Context, a *storage.Artifact, dir string, opts archive.Options) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := archive.Write(dir, pw, opts)
		if err != nil {
			// Wrapped, so that no failure reads as the clean io.EOF that
			// alone lets Store commit what it has.
			pw.CloseWithError(fmt.Errorf("%w: %w", errArchive, err))
		} else {
			pw.Close()
		}
		done <- err
	}()
	// Limits are checked before the first byte is written: wait for it so
	// a rejected source never starts an upload.
	br := bufio.NewReaderSize(pr, 64<<10)
	if _, err := br.Peek(1); err != nil && err != io.EOF {
		pr.CloseWithError(err)
		return fmt.Errorf("%w: %w", errArchive, <-done)
	}
	serr := s.Store(ctx, a, br)
	// Unblock the writer if Store stopped reading early.
	pr.CloseWithError(errStoreEnded)
	if aerr := <-done; aerr != nil && !errors.Is(aerr, errStoreEnded) {
		return fmt.Errorf("%w: %w", errArchive, aerr)
	}
	return serr
}

// storeFile streams a local file into the store, which fills a.Digest
// and a.Size once the artifact is committed.
func (s *artifactStore) storeFile(ctx context.Context, a *storage.Artifact, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return s.Store(ctx, a, f)
}

// collectGarbage applies the retention policy to the object of current,
// keeping current.
func (s *artifactStore) collectGarbage(ctx context.Context, current storage.Artifact) error {
	p := s.retention
	p.Current = &current
	return s.GarbageCollect(ctx, p)
}

// deleteAll removes every artifact of the object, as on its deletion.
func (s *artifactStore) deleteAll(ctx context.Context, kind string, obj client.Object) (int, error) {
	arts, err := s.List(ctx, storage.Filter{Kind: strings.ToLower(kind), Namespace: obj.GetNamespace(), Name: obj.GetName()})
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, a := range arts {
		if err := s.Delete(ctx, a); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return deleted, err
		}
		deleted++
	}
	return deleted, nil
}

// storeFailed marks the condition a failed store of an archived source
// calls for and returns its typed error. A limit or archiving failure is
// the content's fault and marks failCond (BuildFailed, or
// StorageOperationFailed for a kind that builds nothing); anything else is
// the store's. what names the content in the limit message.
func storeFailed(obj conditions.Setter, err error, revision, what, failCond string) error {
	var (
		limit *archive.LimitError
		e     *Error
	)
	cond := failCond
	switch {
	case errors.As(err, &limit):
		e = NewGeneric(fmt.Errorf("%s of revision '%s' is too large to archive: %w", what, revision, limit), ArchiveLimitReason)
	case errors.Is(err, errArchive):
		e = NewGeneric(fmt.Errorf("failed to archive revision '%s': %w", revision, err), sourcev1.ArchiveOperationFailedReason)
	default:
		e = NewGeneric(fmt.Errorf("unable to archive artifact to storage: %w", err), sourcev1.ArchiveOperationFailedReason)
		cond = sourcev1.StorageOperationFailedCondition
	}
	conditions.MarkTrue(obj, cond, e.Reason, "%s", e)
	return e
}
