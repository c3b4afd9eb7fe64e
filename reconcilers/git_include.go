package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/tar"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"k8s.io/apimachinery/pkg/types"
)

// artifactSet is the artifacts of spec.include, in the same order.
type artifactSet []*meta.Artifact

// diff reports whether s differs from the included artifacts recorded in
// a status: a different count, or any artifact with other content.
func (s artifactSet) diff(recorded []*meta.Artifact) bool {
	if len(s) != len(recorded) {
		return true
	}
	for i := range s {
		if s[i] == nil || recorded[i] == nil || s[i].Digest != recorded[i].Digest || s[i].Revision != recorded[i].Revision {
			return true
		}
	}
	return false
}

// fetchIncludes returns the current artifact of every included
// GitRepository, or a waiting error while one is missing or has none.
func (r *GitRepositoryReconciler) fetchIncludes(ctx context.Context, obj *sourcev1.GitRepository) (artifactSet, error) {
	set := make(artifactSet, len(obj.Spec.Include))
	for i, incl := range obj.Spec.Include {
		name := incl.GitRepositoryRef.Name
		dep := &sourcev1.GitRepository{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: name}, dep); err != nil {
			return nil, NewWaiting(fmt.Errorf("could not get resource for include '%s': %w", name, err), "NotFound", r.RequeueDependency)
		}
		if dep.GetArtifact() == nil {
			return nil, NewWaiting(fmt.Errorf("no artifact available for include '%s'", name), "NoArtifact", r.RequeueDependency)
		}
		set[i] = dep.GetArtifact().DeepCopy()
	}
	return set, nil
}

// copyInclude extracts the included artifact from the store and copies
// its fromPath into dir at toPath, replacing whatever the checkout had
// there. Both paths must stay inside their trees, writes go through an
// os.Root so a symlink in the checkout cannot redirect them, and the
// extraction is bounded like an archive (symlinks in it are dropped).
func (r *GitRepositoryReconciler) copyInclude(ctx context.Context, a *meta.Artifact, incl sourcev1.GitRepositoryInclude, dir string) error {
	from, to := filepath.Clean(incl.GetFromPath()), filepath.Clean(incl.GetToPath())
	if !filepath.IsLocal(from) && from != "." {
		return fmt.Errorf("fromPath '%s' is not inside the included artifact", incl.GetFromPath())
	}
	if !filepath.IsLocal(to) || to == "." {
		return fmt.Errorf("toPath '%s' is not a path inside the repository", incl.GetToPath())
	}
	sa, err := fromStatus(a)
	if err != nil {
		return err
	}
	rc, err := r.store.Retrieve(ctx, sa)
	if err != nil {
		return fmt.Errorf("retrieve %s: %w", sa.Path(), err)
	}
	defer rc.Close()
	tmp, err := os.MkdirTemp("", "include-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	limit := tar.UnlimitedUntarSize
	if r.ArchiveMaxSize > 0 {
		limit = int(r.ArchiveMaxSize)
	}
	if err := tar.Untar(rc, tmp, tar.WithMaxUntarSize(limit), tar.WithSkipSymlinks()); err != nil {
		return fmt.Errorf("extract %s: %w", sa.Path(), err)
	}
	src := filepath.Join(tmp, from)
	if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
		return fmt.Errorf("fromPath '%s' is not a directory in the artifact of '%s'", incl.GetFromPath(), incl.GitRepositoryRef.Name)
	}

	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.RemoveAll(to); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return root.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			return copyIntoRoot(root, p, target)
		}
		return nil
	})
}

func copyIntoRoot(root *os.Root, src, target string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := root.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}
