package git

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/hiddeco/sshsig"

	"github.com/sourceraft/sourceraft/internal/gitserver"
)

// pgpKey is an OpenPGP key generated for a test, with the time it signs at.
type pgpKey struct {
	entity *openpgp.Entity
	config *packet.Config
}

// newPGPKey generates an OpenPGP key; created and lifetime, when set, date
// its creation and bound its validity, and it signs as of its creation.
func newPGPKey(t *testing.T, created time.Time, lifetime time.Duration) *pgpKey {
	t.Helper()
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, KeyLifetimeSecs: uint32(lifetime / time.Second)}
	if !created.IsZero() {
		cfg.Time = func() time.Time { return created }
	}
	e, err := openpgp.NewEntity("test", "", "test@example.com", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &pgpKey{entity: e, config: cfg}
}

// Sign makes the key a go-git commit signer.
func (k *pgpKey) Sign(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&b, k.entity, r, k.config); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// armoredPublic is the key's public key ring as a verification secret
// holds it.
func (k *pgpKey) armoredPublic(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.entity.Serialize(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func (k *pgpKey) id() string { return k.entity.PrimaryKey.KeyIdString() }

// sshKey is an ed25519 key made by ssh-keygen, which git signs with.
type sshKey struct {
	private string
	public  string
}

func newSSHKey(t *testing.T) sshKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_ed25519")
	run(t, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@example.com", "-f", path)
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return sshKey{private: path, public: string(pub)}
}

// fingerprint is the key's SHA256 fingerprint as ssh-keygen prints it.
func (k sshKey) fingerprint(t *testing.T) string {
	t.Helper()
	fields := strings.Fields(run(t, "", "ssh-keygen", "-l", "-E", "sha256", "-f", k.private+".pub"))
	if len(fields) < 2 {
		t.Fatalf("ssh-keygen -l printed %v", fields)
	}
	return fields[1]
}

// sshSigning are the git options that sign with the key (git runs
// ssh-keygen -Y sign -n git).
func (k sshKey) sshSigning(args ...string) []string {
	return append([]string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + k.private}, args...)
}

func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// signedRepo is a served repository with its working tree's path, for
// go-git to commit and tag in with an OpenPGP key.
type signedRepo struct {
	*gitserver.Repo
	work string
}

func newSignedRepo(t *testing.T, s *gitserver.Server, name string) *signedRepo {
	t.Helper()
	work := t.TempDir()
	r, err := s.NewRepo(name, work)
	if err != nil {
		t.Fatal(err)
	}
	return &signedRepo{Repo: r, work: work}
}

// pgpCommit commits a file on master signed with signer (nil: unsigned)
// through go-git, pushes it and returns its hash.
func (r *signedRepo) pgpCommit(t *testing.T, msg string, signer git.Signer) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(r.work, "file.txt"), []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	repo, err := git.PlainOpen(r.work)
	if err != nil {
		t.Fatal(err)
	}
	w, err := repo.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Add("file.txt"); err != nil {
		t.Fatal(err)
	}
	who := &object.Signature{Name: "test", Email: "test@example.com", When: time.Now()}
	h, err := w.Commit(msg, &git.CommitOptions{Author: who, Committer: who, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	mustOf(t)(r.Git("push", "-q", "origin", "master"))
	return h.String()
}

// pgpTag creates an annotated tag of HEAD signed with key through go-git
// and pushes it.
func (r *signedRepo) pgpTag(t *testing.T, name string, key *pgpKey) {
	t.Helper()
	repo, err := git.PlainOpen(r.work)
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.Head()
	if err != nil {
		t.Fatal(err)
	}
	who := &object.Signature{Name: "test", Email: "test@example.com", When: time.Now()}
	if _, err := repo.CreateTag(name, head.Hash(), &git.CreateTagOptions{Tagger: who, Message: "release " + name, SignKey: key.entity}); err != nil {
		t.Fatal(err)
	}
	mustOf(t)(r.Git("push", "-q", "origin", "refs/tags/"+name))
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
	r := newSignedRepo(t, s, "public/pgp")
	good, other := newPGPKey(t, time.Time{}, 0), newPGPKey(t, time.Time{}, 0)
	head := r.pgpCommit(t, "signed", good)

	c := checkout(t, r.URL, Reference{})
	if c.Hash != head || c.SignatureType() != SignatureTypeOpenPGP || c.Tag != nil {
		t.Fatalf("commit %s of signature type %s, tag %v; want %s, openpgp, no tag", c.Hash, c.SignatureType(), c.Tag, head)
	}
	// git itself must find the payload to be the commit without gpgsig.
	if want := run(t, "", "git", "-C", r.work, "cat-file", "commit", head); !strings.Contains(want, "gpgsig ") || strings.Contains(string(c.Payload), "gpgsig") {
		t.Errorf("payload %q carries the signature header", c.Payload)
	}

	id, err := c.Verify(PublicKeys{KeyRings: []string{good.armoredPublic(t)}})
	if err != nil || id != good.id() {
		t.Fatalf("verify with the signing key: %q, %v; want %s", id, err, good.id())
	}
	// A malformed key ring does not hide a good one.
	id, err = c.Verify(PublicKeys{KeyRings: []string{"not a key", other.armoredPublic(t), good.armoredPublic(t)}})
	if err != nil || id != good.id() {
		t.Errorf("verify with a malformed, another and the signing key ring: %q, %v", id, err)
	}

	id, err = c.Verify(PublicKeys{KeyRings: []string{other.armoredPublic(t)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload with any of the given key rings")
	if !errors.Is(err, ErrNoMatchingKey) {
		t.Errorf("error %v is not ErrNoMatchingKey", err)
	}
	id, err = c.Verify(PublicKeys{KeyRings: []string{"not a key"}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to read armored key ring")
	id, err = c.Verify(PublicKeys{AuthorizedKeys: []string{newSSHKey(t).public}})
	wantVerifyError(t, id, err, "PGP signature detected but no PGP public keys found in secret (keys with .asc suffix)")

	// The signature covers the payload: a changed commit does not verify.
	tampered := *c
	tampered.Payload = bytes.Replace(c.Payload, []byte("signed"), []byte("forged"), 1)
	id, err = tampered.Verify(PublicKeys{KeyRings: []string{good.armoredPublic(t)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload")
}

func TestVerifyExpiredOpenPGPKey(t *testing.T) {
	s := startServer(t)
	r := newSignedRepo(t, s, "public/expired")
	// Valid for an hour two days ago, and the commit signed back then.
	created := time.Now().Add(-48 * time.Hour)
	expired := newPGPKey(t, created, time.Hour)
	r.pgpCommit(t, "signed while the key was valid", expired)

	c := checkout(t, r.URL, Reference{})
	// The signature is good as of its making: only the expiry refuses it.
	ring, err := openpgp.ReadArmoredKeyRing(strings.NewReader(expired.armoredPublic(t)))
	if err != nil {
		t.Fatal(err)
	}
	asOfSigning := &packet.Config{Time: func() time.Time { return created.Add(time.Minute) }}
	if _, err := openpgp.CheckArmoredDetachedSignature(ring, bytes.NewReader(c.Payload), strings.NewReader(c.Signature), asOfSigning); err != nil {
		t.Fatalf("the signature does not verify as of its making: %v", err)
	}
	id, err := c.Verify(PublicKeys{KeyRings: []string{expired.armoredPublic(t)}})
	wantVerifyError(t, id, err, "unable to verify Git commit: unable to verify payload with any of the given key rings")
}

func TestVerifyUnsignedCommit(t *testing.T) {
	s := startServer(t)
	r := newSignedRepo(t, s, "public/unsigned")
	r.pgpCommit(t, "unsigned", nil)
	c := checkout(t, r.URL, Reference{})
	if c.Signature != "" || c.SignatureType() != SignatureTypeEmpty {
		t.Fatalf("unsigned commit has signature %q of type %s", c.Signature, c.SignatureType())
	}
	id, err := c.Verify(PublicKeys{KeyRings: []string{newPGPKey(t, time.Time{}, 0).armoredPublic(t)}})
	wantVerifyError(t, id, err, "unsupported signature type: empty")
}

func TestVerifySSHCommit(t *testing.T) {
	s := startServer(t)
	r := newSignedRepo(t, s, "public/ssh")
	key, other := newSSHKey(t), newSSHKey(t)
	must := mustOf(t)
	if err := os.WriteFile(filepath.Join(r.work, "file.txt"), []byte("ssh"), 0o644); err != nil {
		t.Fatal(err)
	}
	must(r.Git("add", "-A"))
	must(r.Git(key.sshSigning("commit", "-q", "-S", "-m", "ssh signed")...))
	must(r.Git("push", "-q", "origin", "master"))

	c := checkout(t, r.URL, Reference{Branch: "master"})
	if c.SignatureType() != SignatureTypeSSH {
		t.Fatalf("signature type %s, want ssh", c.SignatureType())
	}
	// One secret entry may list several keys, with comments.
	authorized := "# trusted\n" + other.public + "\n" + key.public
	fp, err := c.Verify(PublicKeys{AuthorizedKeys: []string{authorized}})
	if err != nil || fp != key.fingerprint(t) {
		t.Fatalf("verify: %q, %v; want %s", fp, err, key.fingerprint(t))
	}

	fp, err = c.Verify(PublicKeys{AuthorizedKeys: []string{other.public}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature: unable to verify payload with any of the given authorized keys")
	if !errors.Is(err, ErrNoMatchingKey) || !errors.Is(err, sshsig.ErrPublicKeyMismatch) {
		t.Errorf("error %v is not ErrNoMatchingKey and sshsig.ErrPublicKeyMismatch", err)
	}
	fp, err = c.Verify(PublicKeys{AuthorizedKeys: []string{"ssh-ed25519 garbage"}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature: unable to parse authorized keys")
	fp, err = c.Verify(PublicKeys{KeyRings: []string{newPGPKey(t, time.Time{}, 0).armoredPublic(t)}})
	wantVerifyError(t, fp, err, "SSH signature detected but no SSH public keys found in secret (keys with .sshpub suffix)")

	// The same key's signature of the same bytes for another purpose (a
	// file, namespace "file") is no commit signature.
	payload := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(payload, c.Payload, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "", "ssh-keygen", "-Y", "sign", "-q", "-n", "file", "-f", key.private, payload)
	sig, err := os.ReadFile(payload + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	other2 := *c
	other2.Signature = string(sig)
	fp, err = other2.Verify(PublicKeys{AuthorizedKeys: []string{key.public}})
	wantVerifyError(t, fp, err, "unable to verify Git commit SSH signature")
	if !errors.Is(err, sshsig.ErrNamespaceMismatch) {
		t.Errorf("error %v is not sshsig.ErrNamespaceMismatch", err)
	}
}

func TestVerifyTags(t *testing.T) {
	s := startServer(t)
	r := newSignedRepo(t, s, "public/tags")
	pgp, ssh := newPGPKey(t, time.Time{}, 0), newSSHKey(t)
	must := mustOf(t)
	head := r.pgpCommit(t, "release", pgp)
	must(r.Git(ssh.sshSigning("tag", "-s", "-m", "ssh release", "v1.0.0")...))
	must(r.Git("tag", "-a", "-m", "unsigned release", "v1.1.0"))
	must(r.Git("tag", "v1.2.0"))
	must(r.Git("push", "-q", "origin", "--tags"))
	r.pgpTag(t, "v2.0.0", pgp)
	keys := PublicKeys{KeyRings: []string{pgp.armoredPublic(t)}, AuthorizedKeys: []string{ssh.public}}

	c := checkout(t, r.URL, Reference{Tag: "v1.0.0"})
	tagObject := must(r.Git("rev-parse", "v1.0.0"))
	if c.Hash != head || c.Tag == nil || c.Tag.Name != "v1.0.0" || c.Tag.Hash != tagObject || !c.Tag.Signed() {
		t.Fatalf("commit %s, tag %+v; want commit %s through signed tag object %s", c.Hash, c.Tag, head, tagObject)
	}
	if c.Tag.String() != "v1.0.0@"+tagObject || c.Tag.SignatureType() != SignatureTypeSSH {
		t.Errorf("tag %s of signature type %s", c.Tag, c.Tag.SignatureType())
	}
	if fp, err := c.Tag.Verify(keys); err != nil || fp != ssh.fingerprint(t) {
		t.Errorf("verify SSH-signed tag: %q, %v", fp, err)
	}
	// The commit the tag points to has its own (OpenPGP) signature.
	if id, err := c.Verify(keys); err != nil || id != pgp.id() {
		t.Errorf("verify the tagged commit: %q, %v", id, err)
	}
	fp, err := c.Tag.Verify(PublicKeys{AuthorizedKeys: []string{newSSHKey(t).public}})
	wantVerifyError(t, fp, err, "unable to verify Git tag SSH signature: unable to verify payload with any of the given authorized keys")

	// SemVer and a refs/tags/ name resolve through the tag too.
	for _, ref := range []Reference{{SemVer: ">=2.0.0"}, {Name: "refs/tags/v2.0.0"}} {
		c := checkout(t, r.URL, ref)
		if c.Tag == nil || c.Tag.Name != "v2.0.0" || c.Tag.SignatureType() != SignatureTypeOpenPGP {
			t.Fatalf("%+v: tag %+v, want the OpenPGP-signed v2.0.0", ref, c.Tag)
		}
		if id, err := c.Tag.Verify(keys); err != nil || id != pgp.id() {
			t.Errorf("%+v: verify OpenPGP-signed tag: %q, %v", ref, id, err)
		}
		id, err := c.Tag.Verify(PublicKeys{KeyRings: []string{newPGPKey(t, time.Time{}, 0).armoredPublic(t)}})
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
	r := newSignedRepo(t, s, "public/payload")
	ssh := newSSHKey(t)
	must := mustOf(t)
	must(r.Commit("c", map[string]string{"a": "a"}))
	must(r.Git(ssh.sshSigning("tag", "-s", "-m", "release", "v1.0.0")...))
	must(r.Git("push", "-q", "origin", "--tags"))
	c := checkout(t, r.URL, Reference{Tag: "v1.0.0"})
	obj := append(append([]byte{}, c.Tag.Payload...), c.Tag.Signature...)
	h := plumbing.ComputeHash(plumbing.TagObject, obj)
	if h.String() != c.Tag.Hash {
		t.Errorf("payload+signature hashes to %s, the tag object is %s", h, c.Tag.Hash)
	}
}
