package git

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/hiddeco/sshsig"
	gossh "golang.org/x/crypto/ssh"
)

// The data key suffixes of a Flux verification secret: OpenPGP public
// key rings and SSH authorized keys.
const (
	PGPKeySuffix = ".asc"
	SSHKeySuffix = ".sshpub"
)

// sshNamespace is the namespace Git signs commits and tags in with SSH
// keys (gitformat-signature(5)); a signature made for another purpose, such
// as a file, must not pass for a commit's.
const sshNamespace = "git"

// The signature types as Flux names them in messages.
const (
	SignatureTypeOpenPGP = "openpgp"
	SignatureTypeSSH     = "ssh"
	SignatureTypeX509    = "x509"
	SignatureTypeEmpty   = "empty"
	SignatureTypeUnknown = "unknown"
)

// armor prefix → signature type, as Git recognises signatures
// (gpg-interface.c). x509 is told apart only to name it in the error.
var signatureArmors = []struct{ prefix, typ string }{
	{"-----BEGIN PGP SIGNATURE-----", SignatureTypeOpenPGP},
	{"-----BEGIN SSH SIGNATURE-----", SignatureTypeSSH},
	{"-----BEGIN SIGNED MESSAGE-----", SignatureTypeX509},
}

// ErrNoMatchingKey: no trusted key verifies the signature.
var ErrNoMatchingKey = errors.New("no matching key")

// Tag is the tag a checkout resolved its reference through.
type Tag struct {
	// Name is the tag's name, without refs/tags/.
	Name string
	// Hash is the SHA-1 of the annotated tag object; empty for a
	// lightweight tag, which has no object and cannot be signed.
	Hash string
	// Signature is the armored signature of the tag object, empty when it
	// is unsigned.
	Signature string
	// Payload is the tag object without its signature: the bytes the
	// signature is over.
	Payload []byte
}

// String is the tag as Flux names it in messages: <name>@<hash>, or the
// name of a lightweight tag.
func (t *Tag) String() string {
	if t.Hash == "" {
		return t.Name
	}
	return t.Name + "@" + t.Hash
}

// Signed reports whether the tag carries a signature.
func (t *Tag) Signed() bool { return t.Signature != "" }

// SignatureType is the type of the tag's signature: one of the
// SignatureType constants.
func (t *Tag) SignatureType() string { return signatureType(t.Signature) }

// Verify checks the tag's signature against keys and returns the ID of
// the key that made it: an OpenPGP key ID or an SSH SHA256 fingerprint.
func (t *Tag) Verify(keys PublicKeys) (string, error) {
	return verify("tag", t.Signature, t.Payload, keys)
}

// SignatureType is the type of the commit's signature: one of the
// SignatureType constants.
func (c *Commit) SignatureType() string { return signatureType(c.Signature) }

// Verify checks the commit's signature against keys and returns the ID
// of the key that made it: an OpenPGP key ID or an SSH SHA256
// fingerprint. The referencing tag's signature is Tag.Verify's.
func (c *Commit) Verify(keys PublicKeys) (string, error) {
	return verify("commit", c.Signature, c.Payload, keys)
}

// PublicKeys are the keys signatures are trusted from.
type PublicKeys struct {
	// KeyRings are armored OpenPGP public key rings.
	KeyRings []string
	// AuthorizedKeys are SSH public keys in authorized_keys format, one
	// or more a string.
	AuthorizedKeys []string
}

// PublicKeysFromSecret reads the keys of a Flux verification secret:
// every key ending in .sshpub is SSH authorized keys, every other (.asc,
// and, as Flux still accepts, a key without either suffix) an OpenPGP key
// ring. Keys are taken in name order, so the key a signature is reported
// verified with does not depend on map order.
func PublicKeysFromSecret(data map[string][]byte) PublicKeys {
	var keys PublicKeys
	names := make([]string, 0, len(data))
	for k := range data {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if strings.HasSuffix(k, SSHKeySuffix) {
			keys.AuthorizedKeys = append(keys.AuthorizedKeys, string(data[k]))
		} else {
			keys.KeyRings = append(keys.KeyRings, string(data[k]))
		}
	}
	return keys
}

func signatureType(sig string) string {
	sig = strings.TrimSpace(sig)
	for _, a := range signatureArmors {
		if strings.HasPrefix(sig, a.prefix) {
			return a.typ
		}
	}
	if sig == "" {
		return SignatureTypeEmpty
	}
	return SignatureTypeUnknown
}

// verify checks the signature of the Git object named what by its type,
// with Flux's messages: an unsigned object fails as the unsupported
// signature type "empty".
func verify(what, sig string, payload []byte, keys PublicKeys) (string, error) {
	switch typ := signatureType(sig); typ {
	case SignatureTypeOpenPGP:
		if len(keys.KeyRings) == 0 {
			return "", fmt.Errorf("PGP signature detected but no PGP public keys found in secret (keys with %s suffix)", PGPKeySuffix)
		}
		id, err := verifyPGP(sig, payload, keys.KeyRings)
		if err != nil {
			return "", fmt.Errorf("unable to verify Git %s: %w", what, err)
		}
		return id, nil
	case SignatureTypeSSH:
		if len(keys.AuthorizedKeys) == 0 {
			return "", fmt.Errorf("SSH signature detected but no SSH public keys found in secret (keys with %s suffix)", SSHKeySuffix)
		}
		fp, err := verifySSH(sig, payload, keys.AuthorizedKeys)
		if err != nil {
			return "", fmt.Errorf("unable to verify Git %s SSH signature: %w", what, err)
		}
		return fp, nil
	default:
		return "", fmt.Errorf("unsupported signature type: %s", typ)
	}
}

// verifyPGP checks a detached armored OpenPGP signature over payload
// against each key ring and returns the signer's primary key ID. go-crypto
// also refuses a signature by an expired or revoked key. A key ring that
// does not parse is reported only when none did, so a malformed entry
// cannot hide that a valid one did not match.
func verifyPGP(sig string, payload []byte, keyRings []string) (string, error) {
	var parseErr error
	parsed := 0
	for _, r := range keyRings {
		ring, err := openpgp.ReadArmoredKeyRing(strings.NewReader(r))
		if err != nil {
			if parseErr == nil {
				parseErr = fmt.Errorf("unable to read armored key ring: %w", err)
			}
			continue
		}
		parsed++
		signer, err := openpgp.CheckArmoredDetachedSignature(ring, bytes.NewReader(payload), strings.NewReader(strings.TrimSpace(sig)), nil)
		if err == nil {
			return signer.PrimaryKey.KeyIdString(), nil
		}
	}
	if parsed == 0 && parseErr != nil {
		return "", parseErr
	}
	return "", fmt.Errorf("unable to verify payload with any of the given key rings: %w", ErrNoMatchingKey)
}

// verifySSH checks an armored SSH signature (SSHSIG, namespace "git")
// over payload against each authorized key and returns the SHA256
// fingerprint of the one that made it. As with key rings, an
// authorized_keys entry that does not parse is reported only when none
// did; the reasons the keys were refused stay in the error chain.
func verifySSH(sig string, payload []byte, authorizedKeys []string) (string, error) {
	s, err := sshsig.Unarmor([]byte(strings.TrimSpace(sig)))
	if err != nil {
		return "", fmt.Errorf("unable to unarmor SSH signature: %w", err)
	}
	var (
		parseErr error
		parsed   int
		refused  = []error{ErrNoMatchingKey}
	)
	for _, keys := range authorizedKeys {
		pubs, err := parseAuthorizedKeys(keys)
		if err != nil {
			if parseErr == nil {
				parseErr = fmt.Errorf("unable to parse authorized keys: %w", err)
			}
			continue
		}
		parsed++
		for _, pub := range pubs {
			err := sshsig.Verify(bytes.NewReader(payload), s, pub, s.HashAlgorithm, sshNamespace)
			if err == nil {
				return gossh.FingerprintSHA256(pub), nil
			}
			if !slices.ContainsFunc(refused, func(e error) bool { return errors.Is(e, err) }) {
				refused = append(refused, err)
			}
		}
	}
	if parsed == 0 && parseErr != nil {
		return "", parseErr
	}
	return "", fmt.Errorf("unable to verify payload with any of the given authorized keys: %w", errors.Join(refused...))
}

// parseAuthorizedKeys parses authorized_keys text, skipping blank lines
// and comments; any other line that is not a public key fails it all (a
// typo in a trusted key should be seen, not skipped).
func parseAuthorizedKeys(text string) ([]gossh.PublicKey, error) {
	var pubs []gossh.PublicKey
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("unable to parse authorized key: %w", err)
		}
		pubs = append(pubs, pub)
	}
	return pubs, nil
}

// encodeWithoutSignature is what a Git object's signature is over: the
// object as go-git encodes it with the signature left out.
func encodeWithoutSignature(encode func(plumbing.EncodedObject) error) ([]byte, error) {
	o := &plumbing.MemoryObject{}
	if err := encode(o); err != nil {
		return nil, err
	}
	r, err := o.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}
