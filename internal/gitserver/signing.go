package gitserver

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	gogit "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// PGPKey is an OpenPGP key to sign test commits and tags with. git would
// need gpg and its agent; go-git signs in-process with the same key.
type PGPKey struct {
	entity *openpgp.Entity
	config *packet.Config
}

// NewPGPKey generates an ed25519 OpenPGP key. A non-zero created dates
// its creation, and it signs as of then; a non-zero lifetime bounds its
// validity, so a key created long enough ago signs commits that no longer
// verify.
func NewPGPKey(created time.Time, lifetime time.Duration) (*PGPKey, error) {
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, KeyLifetimeSecs: uint32(lifetime / time.Second)}
	if !created.IsZero() {
		cfg.Time = func() time.Time { return created }
	}
	e, err := openpgp.NewEntity("sourceraft", "", "sourceraft@localhost", cfg)
	if err != nil {
		return nil, fmt.Errorf("generate OpenPGP key: %w", err)
	}
	return &PGPKey{entity: e, config: cfg}, nil
}

// Sign makes the key a go-git Signer: an armored detached signature of r.
func (k *PGPKey) Sign(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&b, k.entity, r, k.config); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ID is the key ID (16 upper-case hex digits) a verification names.
func (k *PGPKey) ID() string { return k.entity.PrimaryKey.KeyIdString() }

// ArmoredPublic is the public key ring, armored, as a Flux verification
// secret holds it under a .asc key.
func (k *PGPKey) ArmoredPublic() (string, error) {
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		return "", err
	}
	if err := k.entity.Serialize(w); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return b.String(), nil
}

// SSHKey is an ed25519 key made by ssh-keygen, which git signs with.
type SSHKey struct {
	// Private is the path of the private key file.
	Private string
	// Public is the public key in authorized_keys format.
	Public string
}

// NewSSHKey makes an unencrypted key in dir with ssh-keygen.
func NewSSHKey(dir string) (SSHKey, error) {
	path := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sourceraft@localhost", "-f", path).CombinedOutput(); err != nil {
		return SSHKey{}, fmt.Errorf("ssh-keygen: %w: %s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		return SSHKey{}, err
	}
	return SSHKey{Private: path, Public: string(pub)}, nil
}

// Fingerprint is the key's SHA256 fingerprint as ssh-keygen prints it.
func (k SSHKey) Fingerprint() (string, error) {
	out, err := exec.Command("ssh-keygen", "-l", "-E", "sha256", "-f", k.Private+".pub").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ssh-keygen -l: %w: %s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 {
		return "", fmt.Errorf("ssh-keygen -l printed %q", out)
	}
	return fields[1], nil
}

// Signing prefixes git arguments with the options that make git sign
// with the key (git commit -S, git tag -s: ssh-keygen -Y sign -n git).
func (k SSHKey) Signing(args ...string) []string {
	return append([]string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + k.Private}, args...)
}

// CommitSigned commits every change in the working tree work with go-git,
// signed by signer (nil: unsigned), and returns the commit's hash; the
// caller pushes it.
func CommitSigned(work, msg string, signer gogit.Signer) (string, error) {
	repo, err := gogit.PlainOpen(work)
	if err != nil {
		return "", err
	}
	w, err := repo.Worktree()
	if err != nil {
		return "", err
	}
	if err := w.AddWithOptions(&gogit.AddOptions{All: true}); err != nil {
		return "", fmt.Errorf("add: %w", err)
	}
	who := &object.Signature{Name: "sourceraft", Email: "sourceraft@localhost", When: time.Now()}
	h, err := w.Commit(msg, &gogit.CommitOptions{Author: who, Committer: who, Signer: signer, AllowEmptyCommits: true})
	if err != nil {
		return "", fmt.Errorf("commit: %w", err)
	}
	return h.String(), nil
}

// TagSigned creates the annotated tag name of HEAD in the working tree
// work with go-git, signed by key; the caller pushes it.
func TagSigned(work, name string, key *PGPKey) error {
	repo, err := gogit.PlainOpen(work)
	if err != nil {
		return err
	}
	head, err := repo.Head()
	if err != nil {
		return err
	}
	who := &object.Signature{Name: "sourceraft", Email: "sourceraft@localhost", When: time.Now()}
	_, err = repo.CreateTag(name, head.Hash(), &gogit.CreateTagOptions{Tagger: who, Message: "release " + name, SignKey: key.entity})
	if err != nil {
		return fmt.Errorf("tag %s: %w", name, err)
	}
	return nil
}
