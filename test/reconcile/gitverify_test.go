package reconcile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gogit "github.com/go-git/go-git/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/reconcilers"
)

// The spec.verify tests: commits and tags signed by real git (SSH keys,
// through ssh-keygen) and by go-git (OpenPGP keys), served by the git
// server, verified by the reconciler against the keys of a Secret.

func verifyPGPKey(t *testing.T, created time.Time, lifetime time.Duration) (*gitserver.PGPKey, string) {
	t.Helper()
	k, err := gitserver.NewPGPKey(created, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.ArmoredPublic()
	if err != nil {
		t.Fatal(err)
	}
	return k, pub
}

func verifySSHKey(t *testing.T) (gitserver.SSHKey, string) {
	t.Helper()
	k, err := gitserver.NewSSHKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fp, err := k.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	return k, fp
}

// pgpCommit commits msg into file.txt with go-git, signed by signer (nil:
// unsigned), pushes it and returns its SHA.
func (r *gitRepo) pgpCommit(msg string, signer gogit.Signer) string {
	r.t.Helper()
	if err := os.WriteFile(filepath.Join(r.work, "file.txt"), []byte(msg), 0o644); err != nil {
		r.t.Fatal(err)
	}
	sha, err := gitserver.CommitSigned(r.work, msg, signer)
	if err != nil {
		r.t.Fatal(err)
	}
	r.push()
	return sha
}

// sshCommit commits msg into file.txt with git, signed with key, pushes it
// and returns its SHA.
func (r *gitRepo) sshCommit(msg string, key gitserver.SSHKey) string {
	r.t.Helper()
	if err := os.WriteFile(filepath.Join(r.work, "file.txt"), []byte(msg), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.git("add", "-A")
	r.git(key.Signing("commit", "-q", "-S", "-m", msg)...)
	r.push()
	return r.head()
}

func verifyHEAD(secret string) func(*sourcev1.GitRepository) {
	return verifyMode(sourcev1.ModeGitHEAD, secret, nil)
}

func verifyMode(mode sourcev1.GitVerificationMode, secret string, ref *sourcev1.GitRepositoryRef) func(*sourcev1.GitRepository) {
	return func(o *sourcev1.GitRepository) {
		o.Spec.Reference = ref
		o.Spec.Verification = &sourcev1.GitRepositoryVerification{Mode: mode, SecretRef: meta.LocalObjectReference{Name: secret}}
	}
}

// verified checks that the object is verified as Flux reports it.
func verified(t *testing.T, o *sourcev1.GitRepository, mode sourcev1.GitVerificationMode, message string) {
	t.Helper()
	c := conditions.Get(o, sourcev1.SourceVerifiedCondition)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != meta.SucceededReason || c.Message != message {
		t.Errorf("SourceVerified %+v, want True/Succeeded %q", c, message)
	}
	if o.Status.SourceVerificationMode == nil || *o.Status.SourceVerificationMode != mode {
		t.Errorf("sourceVerificationMode %v, want %s", o.Status.SourceVerificationMode, mode)
	}
}

// unverified waits until SourceVerified is False with reason and a
// message containing want, and Ready False with the same reason and
// message (Flux's bipolarity), and checks a warning event reached the
// events address.
func unverified(t *testing.T, ns, name, reason, want string) *sourcev1.GitRepository {
	t.Helper()
	o := waitFor(t, ns, name, 60*time.Second, "SourceVerified=False "+reason+" with "+want, func(o *sourcev1.GitRepository) bool {
		return conditions.IsFalse(o, sourcev1.SourceVerifiedCondition) && conditions.GetReason(o, sourcev1.SourceVerifiedCondition) == reason &&
			strings.Contains(conditionMessage(o, sourcev1.SourceVerifiedCondition), want) &&
			conditions.IsFalse(o, meta.ReadyCondition) && conditions.GetReason(o, meta.ReadyCondition) == reason &&
			conditionMessage(o, meta.ReadyCondition) == conditionMessage(o, sourcev1.SourceVerifiedCondition)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		found := false
		for _, ev := range eventSink.find(ns, name, reason) {
			found = found || (ev.Severity == eventv1.EventSeverityError && strings.Contains(ev.Message, want))
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s error event with %q reached the events address", reason, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return o
}

// keptArtifact checks that the status still names, and the replicas still
// serve, the artifact before, and that nothing was stored for sha.
func keptArtifact(t *testing.T, o *sourcev1.GitRepository, before *sourcev1.GitRepository, sha string) {
	t.Helper()
	if o.Status.Artifact == nil || o.Status.Artifact.Digest != before.Status.Artifact.Digest {
		t.Fatalf("status artifact changed from %+v to %+v", before.Status.Artifact, o.Status.Artifact)
	}
	untar(t, download(t, o.Status.Artifact))
	for _, a := range storedArtifacts(t, o.Namespace, o.Name) {
		if strings.Contains(a.File, sha) {
			t.Errorf("an artifact of the unverified commit %s was stored: %s", sha, a.Path())
		}
	}
}

func TestGitVerifyOpenPGP(t *testing.T) {
	ns := newNamespace(t)
	good, goodPub := verifyPGPKey(t, time.Time{}, 0)
	other, _ := verifyPGPKey(t, time.Time{}, 0)
	// Valid for an hour two days ago; it signed then.
	expired, expiredPub := verifyPGPKey(t, time.Now().Add(-48*time.Hour), time.Hour)
	newHelmSecret(t, ns, "keys", map[string]string{"author.asc": goodPub})
	newHelmSecret(t, ns, "expired-key", map[string]string{"author.asc": expiredPub})
	repo := gitSrv.newRepo(t, "public", "verify-pgp")
	first := repo.pgpCommit("signed by the author", good)

	newGitRepository(t, ns, "pgp", repo.URL, verifyHEAD("keys"))
	before := readyAt(t, ns, "pgp", "master@sha1:"+first)
	verified(t, before, sourcev1.ModeGitHEAD, "verified signature of\n\t- commit '"+first+"' with key '"+good.ID()+"'")
	if files := checkArtifact(t, before, first); files["file.txt"] != "signed by the author" {
		t.Errorf("artifact files %v", files)
	}

	t.Run("signature by another key", func(t *testing.T) {
		sha := repo.pgpCommit("signed by someone else", other)
		requestReconcile(t, ns, "pgp")
		o := unverified(t, ns, "pgp", reconcilers.InvalidCommitSignatureReason, "signature verification of commit '"+sha+"' failed: ")
		want := "signature verification of commit '" + sha + "' failed: unable to verify Git commit: unable to verify payload with any of the given key rings: no matching key"
		if msg := conditionMessage(o, sourcev1.SourceVerifiedCondition); msg != want {
			t.Errorf("SourceVerified message %q, want %q", msg, want)
		}
		keptArtifact(t, o, before, sha)
		// The mode of the last successful verification stays.
		if o.Status.SourceVerificationMode == nil || *o.Status.SourceVerificationMode != sourcev1.ModeGitHEAD {
			t.Errorf("sourceVerificationMode %v", o.Status.SourceVerificationMode)
		}
	})

	t.Run("unsigned commit", func(t *testing.T) {
		sha := repo.pgpCommit("unsigned", nil)
		requestReconcile(t, ns, "pgp")
		o := unverified(t, ns, "pgp", reconcilers.InvalidCommitSignatureReason,
			"signature verification of commit '"+sha+"' failed: unsupported signature type: empty")
		keptArtifact(t, o, before, sha)
	})

	t.Run("expired key", func(t *testing.T) {
		sha := repo.pgpCommit("signed with an expired key", expired)
		newGitRepository(t, ns, "expired", repo.URL, verifyHEAD("expired-key"))
		o := unverified(t, ns, "expired", reconcilers.InvalidCommitSignatureReason,
			"signature verification of commit '"+sha+"' failed: unable to verify Git commit: unable to verify payload with any of the given key rings")
		if o.Status.Artifact != nil || len(storedArtifacts(t, ns, "expired")) != 0 {
			t.Errorf("an artifact was stored for a commit signed with an expired key: %+v", o.Status.Artifact)
		}
	})

	t.Run("missing secret, then created", func(t *testing.T) {
		sha := repo.pgpCommit("signed again", good)
		newGitRepository(t, ns, "late-keys", repo.URL, verifyHEAD("late"))
		o := unverified(t, ns, "late-keys", reconcilers.VerificationErrorReason, `public keys secret error: secrets "late" not found`)
		if o.Status.Artifact != nil || conditions.IsTrue(o, meta.StalledCondition) {
			t.Errorf("want no artifact and a retry: %+v %v", o.Status.Artifact, o.Status.Conditions)
		}
		newHelmSecret(t, ns, "late", map[string]string{"author.asc": goodPub})
		// Retried with backoff, no trigger needed.
		o = readyAt(t, ns, "late-keys", "master@sha1:"+sha)
		verified(t, o, sourcev1.ModeGitHEAD, "verified signature of\n\t- commit '"+sha+"' with key '"+good.ID()+"'")
	})

	t.Run("a good signature recovers, and removing spec.verify removes the verification", func(t *testing.T) {
		requestReconcile(t, ns, "pgp")
		o := waitFor(t, ns, "pgp", 60*time.Second, "verified at the new HEAD", func(o *sourcev1.GitRepository) bool {
			return conditions.IsReady(o) && conditions.IsTrue(o, sourcev1.SourceVerifiedCondition) &&
				o.Status.Artifact != nil && o.Status.Artifact.Revision != before.Status.Artifact.Revision
		})
		head := repo.head()
		if o.Status.Artifact.Revision != "master@sha1:"+head {
			t.Fatalf("artifact revision %s, want master@sha1:%s", o.Status.Artifact.Revision, head)
		}
		verified(t, o, sourcev1.ModeGitHEAD, "verified signature of\n\t- commit '"+head+"' with key '"+good.ID()+"'")

		sha := repo.pgpCommit("unsigned again", nil)
		requestReconcile(t, ns, "pgp")
		unverified(t, ns, "pgp", reconcilers.InvalidCommitSignatureReason, "signature verification of commit '"+sha+"' failed")
		updateSpec(t, o, func(o *sourcev1.GitRepository) { o.Spec.Verification = nil })
		o = readyAt(t, ns, "pgp", "master@sha1:"+sha)
		if conditions.Has(o, sourcev1.SourceVerifiedCondition) || o.Status.SourceVerificationMode != nil {
			t.Errorf("verification left after spec.verify was removed: %v, mode %v", o.Status.Conditions, o.Status.SourceVerificationMode)
		}
	})
}

func TestGitVerifySSH(t *testing.T) {
	ns := newNamespace(t)
	key, fp := verifySSHKey(t)
	other, _ := verifySSHKey(t)
	_, pgpPub := verifyPGPKey(t, time.Time{}, 0)
	newHelmSecret(t, ns, "keys", map[string]string{"dev.sshpub": key.Public})
	newHelmSecret(t, ns, "pgp-only", map[string]string{"dev.asc": pgpPub})
	repo := gitSrv.newRepo(t, "public", "verify-ssh")
	first := repo.sshCommit("ssh signed", key)

	newGitRepository(t, ns, "ssh", repo.URL, verifyHEAD("keys"))
	before := readyAt(t, ns, "ssh", "master@sha1:"+first)
	verified(t, before, sourcev1.ModeGitHEAD, "verified signature of\n\t- commit '"+first+"' with key '"+fp+"'")
	checkArtifact(t, before, first)

	newGitRepository(t, ns, "pgp-only", repo.URL, verifyHEAD("pgp-only"))
	unverified(t, ns, "pgp-only", reconcilers.InvalidCommitSignatureReason,
		"signature verification of commit '"+first+"' failed: SSH signature detected but no SSH public keys found in secret (keys with .sshpub suffix)")

	sha := repo.sshCommit("signed by another key", other)
	requestReconcile(t, ns, "ssh")
	o := unverified(t, ns, "ssh", reconcilers.InvalidCommitSignatureReason,
		"signature verification of commit '"+sha+"' failed: unable to verify Git commit SSH signature: unable to verify payload with any of the given authorized keys: no matching key")
	keptArtifact(t, o, before, sha)
}

func TestGitVerifyTags(t *testing.T) {
	ns := newNamespace(t)
	sshKey, fp := verifySSHKey(t)
	otherSSH, _ := verifySSHKey(t)
	pgpKey, pgpPub := verifyPGPKey(t, time.Time{}, 0)
	newHelmSecret(t, ns, "keys", map[string]string{"tags.sshpub": sshKey.Public, "commits.asc": pgpPub})
	repo := gitSrv.newRepo(t, "public", "verify-tags")
	signed := repo.pgpCommit("release commit", pgpKey)
	repo.git(sshKey.Signing("tag", "-s", "-m", "signed release", "v1.0.0")...)
	repo.git("tag", "-a", "-m", "unsigned release", "v1.1.0")
	repo.git("tag", "v1.2.0")
	repo.git(otherSSH.Signing("tag", "-s", "-m", "release by someone else", "v1.3.0")...)
	unsigned := repo.pgpCommit("unsigned commit", nil)
	repo.git(sshKey.Signing("tag", "-s", "-m", "signed tag of an unsigned commit", "v2.0.0")...)
	repo.push()
	tagObject := func(tag string) string { return repo.git("rev-parse", tag) }

	tag := func(name string) *sourcev1.GitRepositoryRef { return &sourcev1.GitRepositoryRef{Tag: name} }
	tests := []struct {
		name     string
		mode     sourcev1.GitVerificationMode
		ref      *sourcev1.GitRepositoryRef
		revision string
		message  string
		// reason is the failure's, "" for a verified artifact.
		reason  string
		stalled bool
	}{
		{
			name: "tag", mode: sourcev1.ModeGitTag, ref: tag("v1.0.0"), revision: "v1.0.0@sha1:" + signed,
			message: "verified signature of\n\t- tag 'v1.0.0@" + tagObject("v1.0.0") + "' with key '" + fp + "'",
		},
		{
			name: "tag and head", mode: sourcev1.ModeGitTagAndHEAD, ref: tag("v1.0.0"), revision: "v1.0.0@sha1:" + signed,
			message: "verified signature of\n\t- tag 'v1.0.0@" + tagObject("v1.0.0") + "' with key '" + fp + "'" +
				"\n\t- commit '" + signed + "' with key '" + pgpKey.ID() + "'",
		},
		{
			name: "head of a tag", mode: sourcev1.ModeGitHEAD, ref: tag("v1.1.0"), revision: "v1.1.0@sha1:" + signed,
			message: "verified signature of\n\t- commit '" + signed + "' with key '" + pgpKey.ID() + "'",
		},
		{
			name: "unsigned annotated tag", mode: sourcev1.ModeGitTag, ref: tag("v1.1.0"), reason: reconcilers.InvalidGitObjectReason,
			message: "cannot verify signature of tag 'v1.1.0@" + tagObject("v1.1.0") + "' since it is not signed",
		},
		{
			name: "lightweight tag", mode: sourcev1.ModeGitTagAndHEAD, ref: tag("v1.2.0"), reason: reconcilers.InvalidGitObjectReason,
			message: "cannot verify signature of tag 'v1.2.0' since it is not signed",
		},
		{
			name: "tag signed by another key", mode: sourcev1.ModeGitTag, ref: tag("v1.3.0"), reason: reconcilers.InvalidTagSignatureReason,
			message: "signature verification of tag 'v1.3.0@" + tagObject("v1.3.0") + "' failed: unable to verify Git tag SSH signature: unable to verify payload with any of the given authorized keys: no matching key\npublic key does not match",
		},
		{
			name: "signed tag of an unsigned commit", mode: sourcev1.ModeGitTagAndHEAD, ref: tag("v2.0.0"), reason: reconcilers.InvalidCommitSignatureReason,
			message: "signature verification of commit '" + unsigned + "' failed: unsupported signature type: empty",
		},
		{
			name: "tag mode without a tag", mode: sourcev1.ModeGitTag, ref: &sourcev1.GitRepositoryRef{Branch: "master"},
			reason: reconcilers.InvalidVerificationModeReason, stalled: true,
			message: "cannot verify tag object's signature if a tag reference is not specified",
		},
	}
	for _, tt := range tests {
		newGitRepository(t, ns, strings.ReplaceAll(tt.name, " ", "-"), repo.URL, verifyMode(tt.mode, "keys", tt.ref))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			if tt.reason == "" {
				o := readyAt(t, ns, name, tt.revision)
				verified(t, o, tt.mode, tt.message)
				return
			}
			o := unverified(t, ns, name, tt.reason, tt.message)
			if msg := conditionMessage(o, sourcev1.SourceVerifiedCondition); msg != tt.message {
				t.Errorf("SourceVerified message %q, want %q", msg, tt.message)
			}
			if o.Status.Artifact != nil || o.Status.SourceVerificationMode != nil {
				t.Errorf("artifact %+v and mode %v for an unverified source", o.Status.Artifact, o.Status.SourceVerificationMode)
			}
			if conditions.IsTrue(o, meta.StalledCondition) != tt.stalled {
				t.Errorf("Stalled is %v, want %v: %v", conditions.IsTrue(o, meta.StalledCondition), tt.stalled, o.Status.Conditions)
			}
		})
	}
}
