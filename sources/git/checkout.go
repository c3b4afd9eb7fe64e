// Package git checks out one reference of a Git repository with go-git
// and names the commit it ended on the way Flux does, and verifies the
// OpenPGP or SSH signatures of that commit and of the tag it was reached
// through (verify.go). It knows Git (URLs, references, auth methods,
// submodules, sparse checkouts, signatures) and nothing of
// Kubernetes: the caller reads credentials from wherever they live and
// maps the errors below to conditions.
package git

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
)

// DefaultBranch is checked out when a Reference names nothing, as in Flux.
const DefaultBranch = "master"

// The errors a checkout fails with, for errors.Is; each is wrapped with
// what was wrong.
var (
	// ErrInvalidURL: the URL is not one a checkout can use.
	ErrInvalidURL = errors.New("invalid URL")
	// ErrInvalidReference: no fetch can satisfy the reference (a bad
	// semver range, a malformed commit or reference name).
	ErrInvalidReference = errors.New("invalid reference")
	// ErrInvalidAuth: the credentials cannot make an auth method (a
	// missing field, an unparseable key).
	ErrInvalidAuth = errors.New("invalid auth options")
	// ErrEmptyRepository: the remote has no commits.
	ErrEmptyRepository = errors.New("git repository is empty")
	// ErrProxySubmodules: submodules cannot be fetched through a proxy
	// (go-git's submodule update has no proxy option, so they would
	// bypass it).
	ErrProxySubmodules = errors.New("submodules cannot be fetched through a proxy")
)

// Commit is the commit a checkout ended on.
type Commit struct {
	// Hash is the full SHA-1 of the commit.
	Hash string
	// Reference is what the revision names before the hash: the branch,
	// the tag, or the full reference name; empty for a bare commit.
	Reference string
	// Message is the commit message.
	Message string
	// Signature is the commit's armored signature (gpgsig), empty when it
	// is unsigned.
	Signature string
	// Payload is the commit without its signature: the bytes the
	// signature is over.
	Payload []byte
	// Tag is the tag the reference resolved through (a tag, semver or
	// refs/tags/ name reference), nil for any other reference.
	Tag *Tag
}

// Revision is the commit's revision as Flux writes it:
// <branch>@sha1:<sha>, <tag>@sha1:<sha>, <ref name>@sha1:<sha>, or
// sha1:<sha> for a commit checked out without a branch.
func (c *Commit) Revision() string {
	if c.Reference == "" {
		return "sha1:" + c.Hash
	}
	return c.Reference + "@sha1:" + c.Hash
}

// ShortMessage is the first line of the message, at most 50 characters.
func (c *Commit) ShortMessage() string {
	line, _, _ := strings.Cut(strings.TrimSpace(c.Message), "\n")
	if r := []rune(line); len(r) > 50 {
		return string(r[:47]) + "..."
	}
	return line
}

// Reference selects what to check out, with the fields and precedence of
// Flux's GitRepository spec.ref: Commit, Name, SemVer, Tag, Branch. The
// zero Reference is DefaultBranch.
type Reference struct {
	// Branch to check out; with Commit, the branch the commit is on.
	Branch string
	Tag    string
	// SemVer is a range; the highest tag in it is checked out.
	SemVer string
	// Name is a full reference name such as refs/pull/1/head.
	Name string
	// Commit is a full 40-character SHA-1.
	Commit string
}

// CheckoutOptions says what to check out from where.
type CheckoutOptions struct {
	URL string
	// Auth authenticates to the remote; nil is anonymous.
	Auth              *Auth
	Ref               Reference
	RecurseSubmodules bool
	// SparseCheckout lists the directories to check out; empty is all.
	SparseCheckout []string
	// Proxy, when set, carries every connection to the remote: an HTTP(S)
	// CONNECT or plain-HTTP forward proxy for http(s) URLs (a SOCKS5 one
	// also works), a SOCKS5 proxy for ssh URLs. User info in the URL is
	// the proxy's basic auth. It is used whatever the host, loopback
	// included, unlike the NO_PROXY rules of the environment. go-git
	// cannot proxy submodule fetches, so Checkout refuses
	// RecurseSubmodules with a Proxy (ErrProxySubmodules).
	Proxy *url.URL
}

// proxyOptions is o.Proxy as go-git's options; the zero value is none.
func (o *CheckoutOptions) proxyOptions() transport.ProxyOptions {
	if o.Proxy == nil {
		return transport.ProxyOptions{}
	}
	return transport.ProxyOptions{URL: o.Proxy.String()}
}

// Checkout fetches the one reference o.Ref selects into dir (shallowly,
// except for a commit, which may lie anywhere in its branch's history)
// and checks its commit out. An empty remote fails with
// ErrEmptyRepository, a reference no fetch can satisfy with
// ErrInvalidReference.
func Checkout(ctx context.Context, dir string, o CheckoutOptions) (*Commit, error) {
	ref := o.Ref
	if o.Auth == nil {
		o.Auth = &Auth{}
	}
	if o.Proxy != nil && o.RecurseSubmodules {
		return nil, ErrProxySubmodules
	}
	repo, err := git.PlainInit(dir, false)
	if err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	remote, err := repo.CreateRemote(&config.RemoteConfig{Name: git.DefaultRemoteName, URLs: []string{o.URL}})
	if err != nil {
		return nil, fmt.Errorf("create remote: %w", err)
	}

	var (
		refspec string
		local   plumbing.ReferenceName
		depth   = 1
		name    string
	)
	// Precedence as in Flux: commit, name, semver, tag, branch.
	switch {
	case ref.Commit != "":
		if len(ref.Commit) != 40 || !plumbing.IsHash(ref.Commit) {
			return nil, fmt.Errorf("%w: commit %q is not a full 40-character SHA-1", ErrInvalidReference, ref.Commit)
		}
		depth = 0
		if ref.Branch != "" {
			name = ref.Branch
			refspec = fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%s", ref.Branch, ref.Branch)
		} else {
			refspec = "+refs/heads/*:refs/remotes/origin/*"
		}
	case ref.Name != "":
		if !strings.HasPrefix(ref.Name, "refs/") || plumbing.ReferenceName(ref.Name).Validate() != nil {
			return nil, fmt.Errorf("%w: name %q is not a valid reference name such as refs/heads/main", ErrInvalidReference, ref.Name)
		}
		name, local = ref.Name, plumbing.ReferenceName(ref.Name)
		refspec = fmt.Sprintf("+%s:%s", ref.Name, ref.Name)
	case ref.SemVer != "":
		tag, err := latestTag(ctx, remote, o.Auth, o.proxyOptions(), ref.SemVer)
		if err != nil {
			return nil, err
		}
		name, local = tag, plumbing.NewTagReferenceName(tag)
		refspec = fmt.Sprintf("+%s:%s", local, local)
	case ref.Tag != "":
		name, local = ref.Tag, plumbing.NewTagReferenceName(ref.Tag)
		refspec = fmt.Sprintf("+%s:%s", local, local)
	default:
		branch := ref.Branch
		if branch == "" {
			branch = DefaultBranch
		}
		name, local = branch, plumbing.NewBranchReferenceName(branch)
		refspec = fmt.Sprintf("+%s:%s", local, local)
	}

	err = remote.FetchContext(ctx, &git.FetchOptions{
		RemoteName:   git.DefaultRemoteName,
		RefSpecs:     []config.RefSpec{config.RefSpec(refspec)},
		Depth:        depth,
		Auth:         o.Auth.method,
		CABundle:     o.Auth.caBundle,
		ProxyOptions: o.proxyOptions(),
		Tags:         git.NoTags,
	})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return nil, fmt.Errorf("%w: %w", ErrEmptyRepository, err)
	}
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil, fmt.Errorf("fetch %s: %w", refspecSource(refspec), err)
	}

	var (
		commit *object.Commit
		tag    *Tag
	)
	if ref.Commit != "" {
		commit, err = repo.CommitObject(plumbing.NewHash(ref.Commit))
		if err != nil {
			where := "any branch"
			if ref.Branch != "" {
				where = "branch '" + ref.Branch + "'"
			}
			return nil, fmt.Errorf("commit '%s' not found in %s: %w", ref.Commit, where, err)
		}
	} else {
		commit, tag, err = resolveCommit(repo, local)
		if err != nil {
			return nil, err
		}
	}
	payload, err := encodeWithoutSignature(commit.EncodeWithoutSignature)
	if err != nil {
		return nil, fmt.Errorf("encode commit %s: %w", commit.Hash, err)
	}

	w, err := repo.Worktree()
	if err != nil {
		return nil, err
	}
	co := &git.CheckoutOptions{Hash: commit.Hash, Force: true}
	for _, d := range o.SparseCheckout {
		co.SparseCheckoutDirectories = append(co.SparseCheckoutDirectories, strings.Trim(strings.TrimPrefix(d, "./"), "/"))
	}
	if err := w.Checkout(co); err != nil {
		return nil, fmt.Errorf("checkout %s: %w", commit.Hash, err)
	}
	for _, d := range co.SparseCheckoutDirectories {
		if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(d))); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("sparse checkout directory '%s' does not exist in commit %s", d, commit.Hash)
		}
	}
	if o.RecurseSubmodules {
		subs, err := w.Submodules()
		if err != nil {
			return nil, fmt.Errorf("list submodules: %w", err)
		}
		err = subs.UpdateContext(ctx, &git.SubmoduleUpdateOptions{
			Init: true, RecurseSubmodules: git.DefaultSubmoduleRecursionDepth, Auth: o.Auth.method,
		})
		if err != nil {
			return nil, fmt.Errorf("update submodules: %w", err)
		}
	}
	return &Commit{
		Hash: commit.Hash.String(), Reference: name, Message: commit.Message,
		Signature: commit.PGPSignature, Payload: payload, Tag: tag,
	}, nil
}

// resolveCommit peels the fetched reference, through an annotated tag if
// need be, to its commit. For a tag reference it also returns the Tag,
// with the annotated tag object's signature and payload.
func resolveCommit(repo *git.Repository, name plumbing.ReferenceName) (*object.Commit, *Tag, error) {
	r, err := repo.Reference(name, true)
	if err != nil {
		return nil, nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if to, err := repo.TagObject(r.Hash()); err == nil {
		c, err := to.Commit()
		if err != nil {
			return nil, nil, fmt.Errorf("tag %s does not point to a commit: %w", name.Short(), err)
		}
		payload, err := encodeWithoutSignature(to.EncodeWithoutSignature)
		if err != nil {
			return nil, nil, fmt.Errorf("encode tag %s: %w", name.Short(), err)
		}
		return c, &Tag{Name: to.Name, Hash: to.Hash.String(), Signature: to.PGPSignature, Payload: payload}, nil
	}
	c, err := repo.CommitObject(r.Hash())
	if err != nil {
		return nil, nil, fmt.Errorf("%s does not point to a commit: %w", name, err)
	}
	var tag *Tag
	if name.IsTag() {
		tag = &Tag{Name: name.Short()}
	}
	return c, tag, nil
}

// latestTag lists the remote's tags and returns the highest version that
// satisfies the semver range.
func latestTag(ctx context.Context, remote *git.Remote, auth *Auth, proxy transport.ProxyOptions, rng string) (string, error) {
	constraint, err := semver.NewConstraint(rng)
	if err != nil {
		return "", fmt.Errorf("%w: semver range '%s': %v", ErrInvalidReference, rng, err)
	}
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: auth.method, CABundle: auth.caBundle, ProxyOptions: proxy})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return "", fmt.Errorf("%w: %w", ErrEmptyRepository, err)
	}
	if err != nil {
		return "", fmt.Errorf("list remote tags: %w", err)
	}
	var (
		best    *semver.Version
		bestTag string
	)
	for _, r := range refs {
		if !r.Name().IsTag() {
			continue
		}
		tag := r.Name().Short()
		v, err := semver.NewVersion(tag)
		if err != nil || !constraint.Check(v) {
			continue
		}
		if best == nil || v.GreaterThan(best) || (v.Equal(best) && tag > bestTag) {
			best, bestTag = v, tag
		}
	}
	if best == nil {
		return "", fmt.Errorf("no tag matches semver range '%s'", rng)
	}
	return bestTag, nil
}

// refspecSource is the remote side of a refspec, for messages.
func refspecSource(refspec string) string {
	src, _, _ := strings.Cut(strings.TrimPrefix(refspec, "+"), ":")
	return src
}
