// Package ocisign signs artifacts in a test registry the way the cosign
// and notation CLIs do, with their own Go libraries: cosign
// simple-signing payloads under the sha256-<hex>.sig tag (with a key, or
// keyless with a Fulcio-style certificate and a Rekor bundle of a
// self-contained Sigstore whose trusted root it writes), and notation JWS
// signatures attached as OCI referrers. Tests of spec.verify use it;
// nothing here talks to anything but the given registry.
package ocisign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	ctx509util "github.com/google/certificate-transparency-go/x509util"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/signer"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	rekorpki "github.com/sigstore/rekor/pkg/pki"
	"github.com/sigstore/rekor/pkg/types"
	"github.com/sigstore/rekor/pkg/types/hashedrekord"
	_ "github.com/sigstore/rekor/pkg/types/hashedrekord/v0.0.1" // registers the hashedrekord version the bundle uses
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	orasremote "oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

// CosignKey is a cosign signing key and its PEM public key, the form
// `cosign generate-key-pair` writes cosign.pub in.
type CosignKey struct {
	Signer signature.Signer
	Public []byte
}

// NewCosignKey generates an ECDSA P-256 key, cosign's default.
func NewCosignKey(t testing.TB) CosignKey {
	t.Helper()
	priv := newKey(t)
	s, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return CosignKey{Signer: s, Public: pub}
}

// DigestRef is the reference of manifest digest in repo of reg.
func DigestRef(t testing.TB, reg *ociregistry.Registry, repo, digest string) name.Digest {
	t.Helper()
	ref, err := name.NewDigest(reg.Host+"/"+repo+"@"+digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// CosignAttach signs, as `cosign sign --key` does, a simple-signing
// payload that claims the manifest claimed, and attaches the signature
// (with opts, such as a certificate) to the manifest signed. A valid
// signature claims what it is attached to; claimed != signed is a
// signature moved to another manifest.
func CosignAttach(t testing.TB, reg *ociregistry.Registry, repo, signed, claimed string, s signature.Signer, opts ...static.Option) {
	t.Helper()
	pl, err := (&payload.Cosign{Image: DigestRef(t, reg, repo, claimed)}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.SignMessage(bytes.NewReader(pl))
	if err != nil {
		t.Fatal(err)
	}
	attachSignature(t, reg, repo, signed, pl, sig, opts...)
}

// attachSignature attaches signature sig of payload pl to the manifest
// signed, under its sha256-<hex>.sig tag.
func attachSignature(t testing.TB, reg *ociregistry.Registry, repo, signed string, pl, sig []byte, opts ...static.Option) {
	t.Helper()
	ociSig, err := static.NewSignature(pl, base64.StdEncoding.EncodeToString(sig), opts...)
	if err != nil {
		t.Fatal(err)
	}
	signedRef := DigestRef(t, reg, repo, signed)
	ro := ociremote.WithRemoteOptions(remote.WithAuth(reg.Auth))
	se, err := ociremote.SignedEntity(signedRef, ro)
	if err != nil {
		t.Fatal(err)
	}
	withSig, err := mutate.AttachSignatureToEntity(se, ociSig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteSignatures(signedRef.Repository, withSig, ro); err != nil {
		t.Fatalf("push signature of %s: %v", signedRef, err)
	}
}

// NotationPKI is a CA and a code-signing leaf it issued, as notation's
// trust stores want them.
type NotationPKI struct {
	// CA is the PEM certificate of the CA, a trust store's content.
	CA []byte
	// Subject is the leaf's subject, for trustedIdentities.
	Subject string
	key     crypto.PrivateKey
	chain   []*x509.Certificate
}

// NewNotationPKI issues a CA and a leaf of subject
// C=US,ST=WA,O=sourceraft,CN=<cn> (notation's trusted identities need C,
// ST and O).
func NewNotationPKI(t testing.TB, cn string) NotationPKI {
	t.Helper()
	caKey, leafKey := newKey(t), newKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn + " CA", Organization: []string{"sourceraft"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	ca := createCert(t, caTmpl, caTmpl, caKey.Public(), caKey)
	leaf := createCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"sourceraft"}, Country: []string{"US"}, Province: []string{"WA"}},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}, ca, leafKey.Public(), caKey)
	return NotationPKI{
		CA:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		Subject: "C=US,ST=WA,O=sourceraft,CN=" + cn,
		key:     leafKey, chain: []*x509.Certificate{leaf, ca},
	}
}

// NotationSign signs manifest digest in repo of reg with p's leaf, as
// `notation sign` does (JWS envelope, pushed as a referrer of the
// manifest).
func NotationSign(t testing.TB, reg *ociregistry.Registry, repo, digest string, p NotationPKI) {
	t.Helper()
	s, err := signer.NewGenericSigner(p.key, p.chain)
	if err != nil {
		t.Fatal(err)
	}
	r, err := orasremote.NewRepository(reg.Host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	cfg, err := reg.Auth.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	r.Client = &auth.Client{Credential: auth.StaticCredential(reg.Host, auth.Credential{Username: cfg.Username, Password: cfg.Password})}
	ref := reg.Host + "/" + repo + "@" + digest
	if _, err := notation.Sign(context.Background(), s, registry.NewRepository(r), notation.SignOptions{
		SignerSignOptions: notation.SignerSignOptions{SignatureMediaType: "application/jose+json"},
		ArtifactReference: ref,
	}); err != nil {
		t.Fatalf("notation sign %s: %v", ref, err)
	}
}

// Sigstore is a self-contained Sigstore of new keys: a Fulcio-style CA,
// a CT log and a Rekor log, for keyless signatures that verify offline
// against its trusted root.
type Sigstore struct {
	ca         *x509.Certificate
	caKey      *ecdsa.PrivateKey
	ctKey      *ecdsa.PrivateKey
	rekorKey   *ecdsa.PrivateKey
	start, end time.Time
}

// NewSigstore creates a Sigstore of new keys.
func NewSigstore(t testing.TB) *Sigstore {
	t.Helper()
	s := &Sigstore{caKey: newKey(t), ctKey: newKey(t), rekorKey: newKey(t), start: time.Now().Add(-time.Hour), end: time.Now().Add(24 * time.Hour)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sigstore", Organization: []string{"sourceraft"}},
		NotBefore: s.start, NotAfter: s.end,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	s.ca = createCert(t, tmpl, tmpl, s.caKey.Public(), s.caKey)
	return s
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func createCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// logID is the ID of a log: the SHA-256 of its public key's DER.
func logID(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return sum[:]
}

// TrustedRoot is the trusted_root.json of s, what
// spec.verify.trustedRootSecretRef holds.
func (s *Sigstore) TrustedRoot(t testing.TB) []byte {
	t.Helper()
	tlog := func(k *ecdsa.PrivateKey) map[string]*root.TransparencyLog {
		id := logID(t, k)
		return map[string]*root.TransparencyLog{hex.EncodeToString(id): {
			BaseURL: "https://log.invalid", ID: id, ValidityPeriodStart: s.start, ValidityPeriodEnd: s.end,
			HashFunc: crypto.SHA256, PublicKey: k.Public(), SignatureHashFunc: crypto.SHA256,
		}}
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{Root: s.ca, ValidityPeriodStart: s.start, ValidityPeriodEnd: s.end, URI: "https://fulcio.invalid"}},
		tlog(s.ctKey), nil, tlog(s.rekorKey))
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// oidIssuer is Fulcio's OIDC issuer extension (the v1 form, the issuer
// as raw bytes).
var oidIssuer = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}

// leaf issues a 10-minute code-signing certificate for identity (an
// email) from OIDC issuer, as Fulcio does, with an SCT of s's CT log
// embedded unless withoutSCT.
func (s *Sigstore) leaf(t testing.TB, identity, issuer string, withoutSCT bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	now := time.Now().Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), EmailAddresses: []string{identity},
		NotBefore: now, NotAfter: now.Add(10 * time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{{Id: oidIssuer, Value: []byte(issuer)}},
	}
	plain := createCert(t, tmpl, s.ca, key.Public(), s.caKey)
	if withoutSCT {
		return plain, key
	}
	// The SCT signs the certificate's TBS without the SCT list, which
	// is plain's: the list is the last extension of the final one.
	issuerKeyHash := sha256.Sum256(s.ca.RawSubjectPublicKeyInfo)
	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: [32]byte(logID(t, s.ctKey))}, Timestamp: uint64(time.Now().UnixMilli())}
	input, err := ct.SerializeSCTSignatureInput(sct, ct.LogEntry{Leaf: ct.MerkleTreeLeaf{
		Version: ct.V1, LeafType: ct.TimestampedEntryLeafType,
		TimestampedEntry: &ct.TimestampedEntry{Timestamp: sct.Timestamp, EntryType: ct.PrecertLogEntryType,
			PrecertEntry: &ct.PreCert{IssuerKeyHash: issuerKeyHash, TBSCertificate: plain.RawTBSCertificate}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(input)
	sig, err := ecdsa.SignASN1(rand.Reader, s.ctKey, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sct.Signature = ct.DigitallySigned{Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA}, Signature: sig}
	list, err := ctx509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{&sct})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cttls.Marshal(*list)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := asn1.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}, Value: ext})
	return createCert(t, tmpl, s.ca, key.Public(), s.caKey), key
}

// KeylessAttach signs manifest digest in repo of reg as `cosign sign`
// without a key does: with a short-lived certificate of s for identity
// (an email) from OIDC issuer, attached with its chain and the Rekor
// bundle of log (nil: s). withoutSCT leaves the CT log's SCT out of the
// certificate.
func (s *Sigstore) KeylessAttach(t testing.TB, reg *ociregistry.Registry, repo, digest, identity, issuer string, log *Sigstore, withoutSCT bool) {
	t.Helper()
	if log == nil {
		log = s
	}
	leaf, key := s.leaf(t, identity, issuer, withoutSCT)
	sv, err := signature.LoadECDSASignerVerifier(key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, err := cryptoutils.MarshalCertificateToPEM(leaf)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := cryptoutils.MarshalCertificateToPEM(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := (&payload.Cosign{Image: DigestRef(t, reg, repo, digest)}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sv.SignMessage(bytes.NewReader(pl))
	if err != nil {
		t.Fatal(err)
	}
	attachSignature(t, reg, repo, digest, pl, sig, static.WithCertChain(leafPEM, chainPEM), static.WithBundle(log.rekorBundle(t, pl, sig, leafPEM)))
}

// rekorBundle is the Rekor bundle `cosign sign` attaches: a hashedrekord
// entry of the signature and certificate, with the signed entry
// timestamp of s's transparency log, as if s had logged it now.
func (s *Sigstore) rekorBundle(t testing.TB, pl, sig, certPEM []byte) *cbundle.RekorBundle {
	t.Helper()
	ctx := context.Background()
	sum := sha256.Sum256(pl)
	proposed, err := types.NewProposedEntry(ctx, hashedrekord.KIND, hashedrekord.New().DefaultVersion(), types.ArtifactProperties{
		PublicKeyBytes: [][]byte{certPEM}, PKIFormat: string(rekorpki.X509),
		ArtifactHash: hex.EncodeToString(sum[:]), SignatureBytes: sig,
	})
	if err != nil {
		t.Fatal(err)
	}
	entry, err := types.CreateVersionedEntry(proposed)
	if err != nil {
		t.Fatal(err)
	}
	canonical, err := types.CanonicalizeEntry(ctx, entry)
	if err != nil {
		t.Fatal(err)
	}
	p := cbundle.RekorPayload{Body: base64.StdEncoding.EncodeToString(canonical), IntegratedTime: time.Now().Unix(), LogIndex: 1,
		LogID: hex.EncodeToString(logID(t, s.rekorKey))}
	// The signed entry timestamp signs the canonical JSON of the payload.
	js, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	canonicalJSON, err := jsoncanonicalizer.Transform(js)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(canonicalJSON)
	set, err := ecdsa.SignASN1(rand.Reader, s.rekorKey, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return &cbundle.RekorBundle{SignedEntryTimestamp: set, Payload: p}
}
