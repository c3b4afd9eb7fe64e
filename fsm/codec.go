package fsm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/sourceraft/sourceraft/storage"
)

// cmdType is a command's first byte without the skip bit.
type cmdType uint8

// The numbers are on the wire and in every Raft log: never reuse or renumber.
const (
	cmdChunk           cmdType = 1
	cmdCommit          cmdType = 2
	cmdDeleteArtifacts cmdType = 3
	cmdAbortUploads    cmdType = 4
	cmdExpireUploads   cmdType = 5
	cmdSetNode         cmdType = 6
	cmdRemoveNode      cmdType = 7
	cmdCommitRemote    cmdType = 8
	cmdMoveBlobs       cmdType = 9
	cmdForgetGarbage   cmdType = 10
)

// skipUnknown on a type byte lets a replica that does not know the type
// ignore the command instead of stopping.
const skipUnknown cmdType = 0x80

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// errMalformed is wrapped by every decode failure; it never reaches a
// caller of Apply because a command that does not decode panics.
var errMalformed = errors.New("malformed command")

// Chunk is one piece of an upload. Seq 0 starts the upload at StartedAt, the
// leader's clock in unix nanoseconds, which later ExpireUploads compare to.
type Chunk struct {
	UploadID  string
	Seq       uint32
	StartedAt int64
	Data      []byte
}

// chunkCmd is a decoded Chunk; value is the tail of the command, checksum
// then data, exactly the bytes stored for the chunk.
type chunkCmd struct {
	Chunk
	crc   uint32
	value []byte
}

// EncodeChunk returns the command appending c to its upload: the upload id,
// seq and start time, then the crc32c of Data and Data itself.
func EncodeChunk(c Chunk) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(c.UploadID)+4+8+4+len(c.Data))
	b = append(b, byte(cmdChunk))
	b = appendString(b, c.UploadID)
	b = binary.BigEndian.AppendUint32(b, c.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(c.StartedAt))
	b = binary.BigEndian.AppendUint32(b, checksum(c.Data))
	return append(b, c.Data...)
}

func decodeChunk(body []byte) (chunkCmd, error) {
	d := decoder{b: body}
	var c chunkCmd
	c.UploadID = d.string("upload id")
	c.Seq = d.uint32("seq")
	c.StartedAt = int64(d.uint64("started at"))
	c.value = d.rest()
	if d.err == nil && len(c.value) < 4 {
		return chunkCmd{}, fmt.Errorf("%w: chunk without checksum", errMalformed)
	}
	if d.err != nil {
		return chunkCmd{}, d.err
	}
	c.crc = binary.BigEndian.Uint32(c.value)
	c.Data = c.value[4:]
	return c, nil
}

// Commit makes an upload's content visible as Artifact. The leader fills
// Artifact.Digest, Size and LastUpdateTime; Chunks is how many chunks it sent.
type Commit struct {
	UploadID string
	Chunks   uint32
	Artifact storage.Artifact
}

// commitCmd is a decoded Commit; raw is the artifact JSON as stored.
type commitCmd struct {
	Commit
	raw []byte
}

// EncodeCommit returns the command committing c. It panics if the artifact
// cannot be marshalled, which only a LastUpdateTime outside years 0-9999 does.
func EncodeCommit(c Commit) []byte {
	a, err := json.Marshal(c.Artifact)
	if err != nil {
		panic(fmt.Errorf("fsm: encode commit of upload %q: %w", c.UploadID, err))
	}
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(c.UploadID)+4+len(a))
	b = append(b, byte(cmdCommit))
	b = appendString(b, c.UploadID)
	b = binary.BigEndian.AppendUint32(b, c.Chunks)
	return append(b, a...)
}

func decodeCommit(body []byte) (commitCmd, error) {
	d := decoder{b: body}
	var c commitCmd
	c.UploadID = d.string("upload id")
	c.Chunks = d.uint32("chunks")
	c.raw = d.rest()
	if d.err != nil {
		return commitCmd{}, d.err
	}
	if err := json.Unmarshal(c.raw, &c.Artifact); err != nil {
		return commitCmd{}, fmt.Errorf("%w: artifact: %v", errMalformed, err)
	}
	return c, nil
}

// EncodeDeleteArtifacts returns the command removing the artifacts at paths.
// A blob whose last artifact goes is deleted with its chunks.
func EncodeDeleteArtifacts(paths []string) []byte {
	return encodeStrings(cmdDeleteArtifacts, paths)
}

// EncodeAbortUploads returns the command removing uncommitted uploads and
// their chunks.
func EncodeAbortUploads(uploadIDs []string) []byte {
	return encodeStrings(cmdAbortUploads, uploadIDs)
}

func encodeStrings(t cmdType, ss []string) []byte {
	n := 1 + binary.MaxVarintLen64
	for _, s := range ss {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, 0, n)
	b = append(b, byte(t))
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

func decodeStrings(body []byte) ([]string, error) {
	d := decoder{b: body}
	ss := d.strings("list")
	return ss, d.end()
}

// EncodeExpireUploads returns the command removing the uncommitted uploads
// started before the given unix nanoseconds, the leader's clock.
func EncodeExpireUploads(before int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{byte(cmdExpireUploads)}, uint64(before))
}

func decodeExpireUploads(body []byte) (int64, error) {
	d := decoder{b: body}
	before := int64(d.uint64("before"))
	return before, d.end()
}

// Node is a replica's addresses as it registered them through the log.
type Node struct {
	ID          string `json:"id"`
	RaftAddr    string `json:"raftAddr"`
	APIAddr     string `json:"apiAddr,omitempty"`
	StorageAddr string `json:"storageAddr,omitempty"`
}

// nodeCmd is a decoded SetNode; raw is the JSON as stored.
type nodeCmd struct {
	Node
	raw []byte
}

// EncodeSetNode returns the command registering or updating n.
func EncodeSetNode(n Node) []byte {
	b, _ := json.Marshal(n) // strings only: cannot fail
	return append([]byte{byte(cmdSetNode)}, b...)
}

func decodeSetNode(body []byte) (nodeCmd, error) {
	var n nodeCmd
	if err := json.Unmarshal(body, &n.Node); err != nil {
		return nodeCmd{}, fmt.Errorf("%w: node: %v", errMalformed, err)
	}
	n.raw = body
	return n, nil
}

// EncodeRemoveNode returns the command forgetting the node with id.
func EncodeRemoveNode(id string) []byte {
	return appendString([]byte{byte(cmdRemoveNode)}, id)
}

func decodeRemoveNode(body []byte) (string, error) {
	d := decoder{b: body}
	id := d.string("node id")
	return id, d.end()
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads a command body; the first failure sticks and later reads
// return zero values, so decode functions check d.err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
	}
	d.b = nil
}

func (d *decoder) take(n uint64, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s: need %d bytes, have %d", what, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32(what string) uint32 {
	if v := d.take(4, what); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) uint64(what string) uint64 {
	if v := d.take(8, what); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("%s: bad varint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	return string(d.take(n, what))
}

func (d *decoder) strings(what string) []string {
	n := d.uvarint(what)
	// Each string takes at least its length byte: a count beyond the
	// remaining bytes is a lie, and must not size an allocation.
	if n > uint64(len(d.b)) {
		d.fail("%s: %d entries in %d bytes", what, n, len(d.b))
		return nil
	}
	ss := make([]string, 0, n)
	for range n {
		ss = append(ss, d.string(what))
	}
	return ss
}

func (d *decoder) rest() []byte {
	v := d.b
	d.b = nil
	return v
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}
