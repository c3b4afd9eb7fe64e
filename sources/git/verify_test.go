package git

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/hiddeco/sshsig"

	"github.com/sourceraft/sourceraft/internal/gitserver"
)

func newPGPKey(t *testing.T, created time.Time, lifetime time.Duration) *gitserver.PGPKey {
	t.Helper()
	k, err := gitserver.NewPGPKey(created, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func armoredPublic(t *testing.T, k *gitserver.PGPKey) string {
	t.Helper()
	pub, err := k.ArmoredPublic()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func newSSHKey(t *testing.T) gitserver.SSHKey {
	t.Helper()
	k, err := gitserver.NewSSHKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fingerprint(t *testing.T, k gitserver.SSHKey) string {
	t.Helper()
	fp, err := k.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// pgpCommit writes msg into file.txt, commits it with go-git signed by
// signer (nil: unsigned), pushes it and returns its hash.
func pgpCommit(t *testing.T, r *gitserver.Repo, msg string, signer git.Signer) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(r.WorkTree(), "file.txt"), []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := gitserver.CommitSigned(r.WorkTree(), msg, signer)
	if err != nil {
		t.Fatal(err)
	}
	mustOf(t)(r.Git("push", "-q", "origin", "master"))
	return h
}

func checkout(t *testing.T, url string, ref Reference) *Commit {
	t.Helper()
	c, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: url, Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wantVerifyError checks that verifying fails with a message starting
// with prefix.
func wantVerifyError(t *testing.T, id string, err error, prefix string) {
	t.Helper()
	if err == nil {
		t.Fatalf("verified with key %q, want an error starting %q", id, prefix)
	}
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("error %q, want it to start with %q", err, prefix)
	}
}

func TestVerifyOpenPGPCommit(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/pgp")
	good, other := newPGPKey(t, time.Time{}, 0), newPGPKey(t, time.Time{}, 0)
	head := pgpCommit(t, r, "signed", good)

	c := checkout(t, r.URL, Reference{})
	if c.Hash != head || c.SignatureType() != SignatureTypeOpenPGP || c.Tag != nil {
		t.Fatalf("commit %s of signature type %s, tag %v; want %s, openpgp, no tag", c.Hash, c.SignatureType(), c.Tag, head)
	}
	// git itself must find the payload to be the commit without gpgsig.
	if want := run(t, "git", "-C", r.WorkTree(), "cat-file", "commit", head); !strings.Contains(want, "gpgsig ") || strings.Contains(string(c.Payload), "gpgsig") {
		t.Errorf("payload %q carries the signature header", c.Payload)
	}

	id, err := c.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, good)}})
	if err != nil || id != good.ID() {
		t.Fatalf("verify with the signing key: %q, %v; want %s", id, err, good.ID())
	}
	// A malformed key ring does not hide a good one.
	id, err = c.Verify(PublicKeys{KeyRings: []string{"not a key", armoredPublic(t, other), armoredPublic(t, good)}})
	if err != nil || id != good.ID() {
		t.Errorf("verify with a malformed, another and the signing key ring: %q, %v", id, err)
	}

	id, err = c.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, other)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload with any of the given key rings")
	if !errors.Is(err, ErrNoMatchingKey) {
		t.Errorf("error %v is not ErrNoMatchingKey", err)
	}
	id, err = c.Verify(PublicKeys{KeyRings: []string{"not a key"}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to read armored key ring")
	id, err = c.Verify(PublicKeys{AuthorizedKeys: []string{newSSHKey(t).Public}})
	wantVerifyError(t, id, err, "PGP signature detected but no PGP public keys found in secret (keys with .asc suffix)")

	// The signature covers the payload: a changed commit does not verify.
	tampered := *c
	tampered.Payload = bytes.Replace(c.Payload, []byte("signed"), []byte("forged"), 1)
	id, err = tampered.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, good)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload")
}

func TestVerifyExpiredOpenPGPKey(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/expired")
	// Valid for an hour two days ago, and the commit signed back then.
	created := time.Now().Add(-48 * time.Hour)
	expired := newPGPKey(t, created, time.Hour)
	pgpCommit(t, r, "signed while the key was valid", expired)

	c := checkout(t, r.URL, Reference{})
	// The signature is good as of its making: only the expiry refuses it.
	ring, err := openpgp.ReadArmoredKeyRing(strings.NewReader(armoredPublic(t, expired)))
	if err != nil {
		t.Fatal(err)
	}
	asOfSigning := &packet.Config{Time: func() time.Time { return created.Add(time.Minute) }}
	if _, err := openpgp.CheckArmoredDetachedSignature(ring, bytes.NewReader(c.Payload), strings.NewReader(c.Signature), asOfSigning); err != nil {
		t.Fatalf("the signature does not verify as of its making: %v", err)
	}
	id, err := c.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, expired)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload with any of the given key rings")
}

func TestVerifyUnsignedCommit(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/unsigned")
	pgpCommit(t, r, "unsigned", nil)
	c := checkout(t, r.URL, Reference{})
	if c.Signature != "" || c.SignatureType() != SignatureTypeEmpty {
		t.Fatalf("unsigned commit has signature %q of type %s", c.Signature, c.SignatureType())
	}
	id, err := c.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, newPGPKey(t, time.Time{}, 0))}})
	wantVerifyError(t, id, err, "unsupported signature type: empty")
}

func TestVerifySSHCommit(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/ssh")
	key, other := newSSHKey(t), newSSHKey(t)
	must := mustOf(t)
	if err := os.WriteFile(filepath.Join(r.WorkTree(), "file.txt"), []byte("ssh"), 0o644); err != nil {
		t.Fatal(err)
	}
	must(r.Git("add", "-A"))
	must(r.Git(key.Signing("commit", "-q", "-S", "-m", "ssh signed")...))
	must(r.Git("push", "-q", "origin", "master"))

	c := checkout(t, r.URL, Reference{Branch: "master"})
	if c.SignatureType() != SignatureTypeSSH {
		t.Fatalf("signature type %s, want ssh", c.SignatureType())
	}
	// One secret entry may list several keys, with comments.
	authorized := "# trusted\n" + other.Public + "\n" + key.Public
	fp, err := c.Verify(PublicKeys{AuthorizedKeys: []string{authorized}})
	if err != nil || fp != fingerprint(t, key) {
		t.Fatalf("verify: %q, %v; want %s", fp, err, fingerprint(t, key))
	}

	fp, err = c.Verify(PublicKeys{AuthorizedKeys: []string{other.Public}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature: unable to verify payload with any of the given authorized keys")
	if !errors.Is(err, ErrNoMatchingKey) || !errors.Is(err, sshsig.ErrPublicKeyMismatch) {
		t.Errorf("error %v is not ErrNoMatchingKey and sshsig.ErrPublicKeyMismatch", err)
	}
	fp, err = c.Verify(PublicKeys{AuthorizedKeys: []string{"ssh-ed25519 garbage"}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature: unable to parse authorized keys")
	fp, err = c.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, newPGPKey(t, time.Time{}, 0))}})
	wantVerifyError(t, fp, err, "SSH signature detected but no SSH public keys found in secret (keys with .sshpub suffix)")

	// The same key's signature of the same bytes for another purpose (a
	// file, namespace "file") is no commit signature.
	payload := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(payload, c.Payload, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "ssh-keygen", "-Y", "sign", "-q", "-n", "file", "-f", key.Private, payload)
	sig, err := os.ReadFile(payload + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	other2 := *c
	other2.Signature = string(sig)
	fp, err = other2.Verify(PublicKeys{AuthorizedKeys: []string{key.Public}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature")
	if !errors.Is(err, sshsig.ErrNamespaceMismatch) {
		t.Errorf("error %v is not sshsig.ErrNamespaceMismatch", err)
	}
}

func TestVerifyTags(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/tags")
	pgp, ssh := newPGPKey(t, time.Time{}, 0), newSSHKey(t)
	must := mustOf(t)
	head := pgpCommit(t, r, "release", pgp)
	must(r.Git(ssh.Signing("tag", "-s", "-m", "ssh release", "v1.0.0")...))
	must(r.Git("tag", "-a", "-m", "unsigned release", "v1.1.0"))
	must(r.Git("tag", "v1.2.0"))
	must(r.Git("push", "-q", "origin", "--tags"))
	if err := gitserver.TagSigned(r.WorkTree(), "v2.0.0", pgp); err != nil {
		t.Fatal(err)
	}
	must(r.Git("push", "-q", "origin", "refs/tags/v2.0.0"))
	keys := PublicKeys{KeyRings: []string{armoredPublic(t, pgp)}, AuthorizedKeys: []string{ssh.Public}}

	c := checkout(t, r.URL, Reference{Tag: "v1.0.0"})
	tagObject := must(r.Git("rev-parse", "v1.0.0"))
	if c.Hash != head || c.Tag == nil || c.Tag.Name != "v1.0.0" || c.Tag.Hash != tagObject || !c.Tag.Signed() {
		t.Fatalf("commit %s, tag %+v; want commit %s through signed tag object %s", c.Hash, c.Tag, head, tagObject)
	}
	if c.Tag.String() != "v1.0.0@"+tagObject || c.Tag.SignatureType() != SignatureTypeSSH {
		t.Errorf("tag %s of signature type %s", c.Tag, c.Tag.SignatureType())
	}
	if fp, err := c.Tag.Verify(keys); err != nil || fp != fingerprint(t, ssh) {
		t.Errorf("verify SSH-signed tag: %q, %v", fp, err)
	}
	// The commit the tag points to has its own (OpenPGP) signature.
	if id, err := c.Verify(keys); err != nil || id != pgp.ID() {
		t.Errorf("verify the tagged commit: %q, %v", id, err)
	}
	fp, err := c.Tag.Verify(PublicKeys{AuthorizedKeys: []string{newSSHKey(t).Public}})
	wantVerifyError(t, fp, err, "unable to verify Git tag SSH signature: unable to verify payload with any of the given authorized keys")

	// SemVer and a refs/tags/ name resolve through the tag too.
	for _, ref := range []Reference{{SemVer: ">=2.0.0"}, {Name: "refs/tags/v2.0.0"}} {
		c := checkout(t, r.URL, ref)
		if c.Tag == nil || c.Tag.Name != "v2.0.0" || c.Tag.SignatureType() != SignatureTypeOpenPGP {
			t.Fatalf("%+v: tag %+v, want the OpenPGP-signed v2.0.0", ref, c.Tag)
		}
		if id, err := c.Tag.Verify(keys); err != nil || id != pgp.ID() {
			t.Errorf("%+v: verify OpenPGP-signed tag: %q, %v", ref, id, err)
		}
		id, err := c.Tag.Verify(PublicKeys{KeyRings: []string{armoredPublic(t, newPGPKey(t, time.Time{}, 0))}})
		wantVerifyError(t, id, err, "unable to verify Git tag: unable to verify payload with any of the given key rings")
	}

	c = checkout(t, r.URL, Reference{Tag: "v1.1.0"})
	if c.Tag == nil || c.Tag.Hash == "" || c.Tag.Signed() {
		t.Errorf("unsigned annotated tag: %+v", c.Tag)
	}
	c = checkout(t, r.URL, Reference{Tag: "v1.2.0"})
	if c.Tag == nil || c.Tag.Hash != "" || c.Tag.Signed() || c.Tag.String() != "v1.2.0" {
		t.Errorf("lightweight tag: %+v", c.Tag)
	}
	for _, ref := range []Reference{{Branch: "master"}, {Commit: head}, {Name: "refs/heads/master"}} {
		if c := checkout(t, r.URL, ref); c.Tag != nil {
			t.Errorf("%+v: tag %+v, want none", ref, c.Tag)
		}
	}
}

func TestPublicKeysFromSecret(t *testing.T) {
	keys := PublicKeysFromSecret(map[string][]byte{
		"b.asc": []byte("B"), "a.asc": []byte("A"), "legacy": []byte("L"),
		"z.sshpub": []byte("Z"), "y.sshpub": []byte("Y"),
	})
	if strings.Join(keys.KeyRings, ",") != "A,B,L" || strings.Join(keys.AuthorizedKeys, ",") != "Y,Z" {
		t.Errorf("key rings %v, authorized keys %v", keys.KeyRings, keys.AuthorizedKeys)
	}
}

// The tag's payload is the tag object without its signature, exactly as
// git hashed it: re-adding the signature gives back the object's hash.
func TestTagPayloadIsTheSignedObject(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/payload")
	ssh := newSSHKey(t)
	must := mustOf(t)
	must(r.Commit("c", map[string]string{"a": "a"}))
	must(r.Git(ssh.Signing("tag", "-s", "-m", "release", "v1.0.0")...))
	must(r.Git("push", "-q", "origin", "--tags"))
	c := checkout(t, r.URL, Reference{Tag: "v1.0.0"})
	obj := append(append([]byte{}, c.Tag.Payload...), c.Tag.Signature...)
	h := plumbing.ComputeHash(plumbing.TagObject, obj)
	if h.String() != c.Tag.Hash {
		t.Errorf("payload+signature hashes to %s, the tag object is %s", h, c.Tag.Hash)
	}
}
