package helm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"
)

// A repository index is read one chart at a time. Helm's loader
// (repo.LoadIndexFile) holds the whole file, a generic YAML tree of it,
// its JSON and the parsed structs at once: about 27 times the file's size,
// 2.7 GB for a 100 MB index. Here the block-style YAML every index
// generator writes (helm repo index, ChartMuseum, Artifactory) is split
// into the lines outside entries and one block per chart, each parsed with
// Helm's strict YAML rules on its own, so memory follows the largest
// chart's versions, not the index. Anything the splitter does not
// recognise, and any part that fails, falls back to Helm's loader on the
// whole file, so the result and the errors are always Helm's.

// ChartVersion is what a chart lookup needs of one version in an index:
// Flux's chart selection matches the version against a range and
// downloads the first URL. Descriptions, maintainers, keywords and the
// rest of Helm's entry are not kept.
type ChartVersion struct {
	Name    string
	Version string
	URLs    []string
	Digest  string
	Created time.Time
}

// Index is a repository index reduced to chart lookups: per chart name,
// its valid versions newest first, as Helm's loader sorts them.
type Index struct {
	entries map[string][]ChartVersion
}

// LoadIndex loads a repository index, YAML or JSON (the index artifact),
// normalised as Helm's loader does (invalid entries dropped, versions
// sorted newest first) and reduced to chart lookups.
func LoadIndex(file string) (*Index, error) {
	x := &Index{entries: map[string][]ChartVersion{}}
	err := walkIndex(file, indexSinkFuncs{
		onEntry: func(name string, cvs repo.ChartVersions) error {
			x.entries[name] = leanVersions(name, cvs)
			return nil
		},
		onReset: func() error {
			clear(x.entries)
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	return x, nil
}

// leanVersions keeps what lookups need of cvs; a version's name is
// usually the chart's, and then shares its string.
func leanVersions(name string, cvs repo.ChartVersions) []ChartVersion {
	out := make([]ChartVersion, len(cvs))
	for i, cv := range cvs {
		n := cv.Name
		if n == name {
			n = name
		}
		out[i] = ChartVersion{Name: n, Version: cv.Version, URLs: slices.Clip(cv.URLs), Digest: cv.Digest, Created: cv.Created}
	}
	return out
}

// Get returns the version of the chart name that Helm's IndexFile.Get
// picks for the semver range version: an exact match of the version
// string first, else the newest version in the range (empty: the newest
// stable version). Its errors are Helm's (repo.ErrNoChartName,
// repo.ErrNoChartVersion, "no chart version found for ...").
func (x *Index) Get(name, version string) (*ChartVersion, error) {
	vs, ok := x.entries[name]
	if !ok {
		return nil, repo.ErrNoChartName
	}
	if len(vs) == 0 {
		return nil, repo.ErrNoChartVersion
	}
	rng := version
	if rng == "" {
		rng = "*"
	}
	constraint, err := semver.NewConstraint(rng)
	if err != nil {
		return nil, err
	}
	if i := slices.IndexFunc(vs, func(cv ChartVersion) bool { return cv.Version == version }); version != "" && i >= 0 {
		return &vs[i], nil
	}
	for i := range vs {
		if v, err := semver.NewVersion(vs[i].Version); err == nil && constraint.Check(v) {
			return &vs[i], nil
		}
	}
	return nil, fmt.Errorf("no chart version found for %s-%s", name, version)
}

// NormalizeIndexFile writes the index at src (YAML or JSON) to dst as
// Flux stores it: normalised by Helm's loader and marshalled as indented
// JSON, byte for byte json.MarshalIndent(index, "", "  "), but written one
// chart at a time.
func NormalizeIndexFile(src, dst string) (err error) {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := &indexJSONWriter{f: f, w: bufio.NewWriterSize(f, 256<<10)}
	if err := walkIndex(src, w); err != nil {
		return err
	}
	return w.w.Flush()
}

// indexSink receives a normalised index: head once (the index with
// Entries nil when they are null, else empty), then every chart in name
// order, then done. reset discards everything received: the walk starts
// again with Helm's loader.
type indexSink interface {
	head(x *repo.IndexFile) error
	entry(name string, cvs repo.ChartVersions) error
	done() error
	reset() error
}

// indexSinkFuncs is an indexSink of the functions that are set.
type indexSinkFuncs struct {
	onEntry func(name string, cvs repo.ChartVersions) error
	onReset func() error
}

func (indexSinkFuncs) head(*repo.IndexFile) error { return nil }
func (s indexSinkFuncs) entry(name string, cvs repo.ChartVersions) error {
	return s.onEntry(name, cvs)
}
func (indexSinkFuncs) done() error    { return nil }
func (s indexSinkFuncs) reset() error { return s.onReset() }

// errUnrecognised makes a walk fall back to Helm's loader.
var errUnrecognised = errors.New("index layout not recognised")

// walkIndex feeds the normalised index at file to s, chart by chart when
// it can, else from Helm's loader.
func walkIndex(file string, s indexSink) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	err = walkChartByChart(f, s)
	if err == nil || !errors.Is(err, errUnrecognised) {
		return err
	}
	if err := s.reset(); err != nil {
		return err
	}
	return walkHelm(file, s)
}

// walkChartByChart feeds s from a JSON index (as Helm, an index whose
// first character is '{' is tried as JSON) or a block-style YAML one.
func walkChartByChart(f *os.File, s indexSink) error {
	first, err := firstByte(f)
	if err != nil {
		return err
	}
	if first == '{' {
		return walkJSON(f, s)
	}
	return walkBlockYAML(f, s)
}

// firstByte is the first byte of f that is not white space, 0 for none,
// with f rewound.
func firstByte(f *os.File) (byte, error) {
	br := bufio.NewReader(f)
	var b byte
	for {
		c, err := br.ReadByte()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		if !strings.ContainsRune(" \t\r\n", rune(c)) {
			b = c
			break
		}
	}
	_, err := f.Seek(0, io.SeekStart)
	return b, err
}

// walkHelm feeds s from Helm's loader on the whole file.
func walkHelm(file string, s indexSink) error {
	idx, err := repo.LoadIndexFile(file)
	if err != nil {
		return err
	}
	entries := idx.Entries
	if entries != nil {
		idx.Entries = map[string]repo.ChartVersions{}
	}
	if err := s.head(idx); err != nil {
		return err
	}
	for _, name := range sortedKeys(entries) {
		if err := s.entry(name, entries[name]); err != nil {
			return err
		}
		delete(entries, name)
	}
	return s.done()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// normalizeVersions applies Helm's loader to one chart's versions: empty
// entries and entries failing validation are dropped (a duplicate
// dependency name is tolerated, as Artifactory strips aliases), missing
// metadata and apiVersion defaulted, and the rest sorted newest first
// with Helm's own (unstable) sort, so equal versions end in Helm's order.
func normalizeVersions(cvs repo.ChartVersions) repo.ChartVersions {
	for i := len(cvs) - 1; i >= 0; i-- {
		cv := cvs[i]
		if cv == nil {
			cvs = append(cvs[:i], cvs[i+1:]...)
			continue
		}
		if cv.Metadata == nil {
			cv.Metadata = &chart.Metadata{}
		}
		if cv.APIVersion == "" {
			cv.APIVersion = chart.APIVersionV1
		}
		if err := cv.Validate(); err != nil && !skippableValidationError(err) {
			cvs = append(cvs[:i], cvs[i+1:]...)
		}
	}
	sort.Sort(sort.Reverse(cvs))
	return cvs
}

// skippableValidationError is the validation failure Helm's loader keeps
// an entry despite (helm/helm#12748).
func skippableValidationError(err error) bool {
	verr, ok := err.(chart.ValidationError)
	return ok && strings.HasPrefix(verr.Error(), "validation: more than one dependency with name or alias")
}

// walkJSON reads a JSON index in two passes: the first decodes the
// top-level fields but entries as json.Unmarshal would and notes where
// each chart's versions are, the second decodes those one chart at a
// time in name order. Duplicate or case-folded keys, which
// json.Unmarshal resolves by position, and anything else unusual are
// errUnrecognised.
func walkJSON(f *os.File, s indexSink) error {
	dec := json.NewDecoder(bufio.NewReaderSize(f, 64<<10))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errUnrecognised
	}
	headFields := map[string]json.RawMessage{}
	folded := map[string]bool{}
	var blocks map[string]chartBlock
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return errUnrecognised
		}
		key, _ := t.(string)
		if folded[strings.ToLower(key)] {
			return errUnrecognised
		}
		folded[strings.ToLower(key)] = true
		if !strings.EqualFold(key, "entries") {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return errUnrecognised
			}
			headFields[key] = raw
			continue
		}
		if key != "entries" {
			return errUnrecognised
		}
		if blocks, err = scanJSONEntries(dec); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return errUnrecognised
	}
	if _, err := dec.Token(); err != io.EOF {
		return errUnrecognised
	}
	raw, err := json.Marshal(headFields)
	if err != nil {
		return errUnrecognised
	}
	head := &repo.IndexFile{}
	if err := json.Unmarshal(raw, head); err != nil || head.APIVersion == "" {
		return errUnrecognised
	}
	if blocks != nil {
		head.Entries = map[string]repo.ChartVersions{}
	}
	if err := s.head(head); err != nil {
		return err
	}
	return walkBlocks(f, blocks, s, func(_ string, b []byte) (repo.ChartVersions, error) {
		var cvs repo.ChartVersions
		// The block starts at the colon after the chart's name.
		err := json.Unmarshal(bytes.TrimLeft(b, " \t\r\n:"), &cvs)
		return cvs, err
	})
}

// scanJSONEntries notes where the versions of each chart of the entries
// object dec is at are: nil for null.
func scanJSONEntries(dec *json.Decoder) (map[string]chartBlock, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, errUnrecognised
	}
	if t == nil {
		return nil, nil
	}
	if t != json.Delim('{') {
		return nil, errUnrecognised
	}
	blocks := map[string]chartBlock{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, errUnrecognised
		}
		name, _ := t.(string)
		if _, dup := blocks[name]; dup {
			return nil, errUnrecognised
		}
		start := dec.InputOffset()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, errUnrecognised
		}
		blocks[name] = chartBlock{off: start, n: dec.InputOffset() - start}
	}
	if _, err := dec.Token(); err != nil {
		return nil, errUnrecognised
	}
	return blocks, nil
}

// walkBlocks parses each chart's block with parse, in name order, and
// feeds its normalised versions to s; a block that does not parse is
// errUnrecognised.
func walkBlocks(f *os.File, blocks map[string]chartBlock, s indexSink, parse func(name string, b []byte) (repo.ChartVersions, error)) error {
	var buf []byte
	for _, name := range sortedKeys(blocks) {
		b := blocks[name]
		buf = slices.Grow(buf[:0], int(b.n))[:b.n]
		if _, err := f.ReadAt(buf, b.off); err != nil {
			return err
		}
		cvs, err := parse(name, buf)
		if err != nil {
			return errUnrecognised
		}
		if err := s.entry(name, normalizeVersions(cvs)); err != nil {
			return err
		}
	}
	return s.done()
}

// chartBlock is where one chart's block under entries is in the file.
type chartBlock struct {
	off, n int64
}

// walkBlockYAML feeds s from a block-style YAML index: the top-level
// lines other than entries are parsed together as the head, then each
// chart's block in name order on its own. The split is conservative: the
// entries key alone on its line at column 0, chart names plain and alone
// at one indentation, sequence items at that indentation or deeper,
// everything else deeper, no directives, document markers or tabs in
// indentation. A split that still cuts through a quoted scalar leaves a
// part that does not parse, and the fallback.
func walkBlockYAML(f *os.File, s indexSink) error {
	head, blocks, err := scanBlockYAML(f)
	if err != nil {
		return err
	}
	x := &repo.IndexFile{}
	if err := yaml.UnmarshalStrict(head, x); err != nil || x.APIVersion == "" || x.Entries != nil {
		return errUnrecognised
	}
	x.Entries = map[string]repo.ChartVersions{}
	if err := s.head(x); err != nil {
		return err
	}
	return walkBlocks(f, blocks, s, func(name string, b []byte) (repo.ChartVersions, error) {
		// A block is its chart's name and versions: a mapping of one key.
		var m map[string]repo.ChartVersions
		if err := yaml.UnmarshalStrict(b, &m); err != nil {
			return nil, err
		}
		cvs, ok := m[name]
		if len(m) != 1 || !ok {
			return nil, errUnrecognised
		}
		return cvs, nil
	})
}

// scanBlockYAML splits a block-style YAML index into the text of its
// top-level fields other than entries, and the block of each chart.
func scanBlockYAML(f *os.File) ([]byte, map[string]chartBlock, error) {
	br := bufio.NewReaderSize(f, 64<<10)
	var (
		head      bytes.Buffer
		blocks    = map[string]chartBlock{}
		inEntries bool
		seenEntry bool
		indent    = -1
		current   string
		off       int64
	)
	closeBlock := func(end int64) {
		if current != "" {
			b := blocks[current]
			b.n = end - b.off
			blocks[current] = b
			current = ""
		}
	}
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: keep reading it.
			long := slices.Clone(line)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && err != io.EOF {
			return nil, nil, err
		}
		if len(line) == 0 && err == io.EOF {
			break
		}
		start := off
		off += int64(len(line))
		text := strings.TrimRight(string(line), "\r\n")
		content := strings.TrimLeft(text, " ")
		ind := len(text) - len(content)
		blank := strings.TrimSpace(content) == "" || content[0] == '#'
		if strings.HasPrefix(content, "\t") {
			return nil, nil, errUnrecognised
		}

		if inEntries && (blank || ind > 0) {
			switch {
			case blank:
			case indent < 0 || ind == indent && content[0] != '-':
				indent = ind
				name, ok := blockKey(content)
				if !ok {
					return nil, nil, errUnrecognised
				}
				if _, dup := blocks[name]; dup {
					return nil, nil, errUnrecognised
				}
				closeBlock(start)
				current = name
				blocks[name] = chartBlock{off: start}
			case ind < indent:
				return nil, nil, errUnrecognised
			case ind == indent && !(content == "-" || strings.HasPrefix(content, "- ")):
				return nil, nil, errUnrecognised
			}
		} else {
			if inEntries {
				closeBlock(start)
				inEntries = false
			}
			// A sequence item at column 0 belongs to the top-level field
			// before it; "---", "...", directives and flow or quoted keys
			// are not split.
			item := content == "-" || strings.HasPrefix(content, "- ")
			if !blank && ind == 0 && !item && strings.ContainsRune("-%.?{[\"'&*!|>@`", rune(content[0])) {
				return nil, nil, errUnrecognised
			}
			if !blank && ind == 0 && strings.HasPrefix(content, "entries:") {
				if rest := strings.TrimSpace(strings.TrimPrefix(content, "entries:")); rest != "" && rest[0] != '#' || seenEntry {
					return nil, nil, errUnrecognised
				}
				inEntries, seenEntry = true, true
			} else {
				head.Write(line)
				if len(line) > 0 && line[len(line)-1] != '\n' {
					head.WriteByte('\n')
				}
			}
		}
		if err == io.EOF {
			break
		}
	}
	if inEntries {
		closeBlock(off)
	}
	if len(blocks) == 0 {
		return nil, nil, errUnrecognised
	}
	return head.Bytes(), blocks, nil
}

// blockKey is the chart name of a line "<name>:" with a plain name of
// the characters chart names use; ok is false for anything else.
func blockKey(content string) (string, bool) {
	name, rest, ok := strings.Cut(content, ":")
	if !ok || name == "" || strings.TrimSpace(rest) != "" && !strings.HasPrefix(rest, " ") {
		return "", false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", false
		}
	}
	if name[0] == '-' || name[0] == '.' {
		return "", false
	}
	return name, true
}

// indexJSONWriter writes a normalised index as json.MarshalIndent(index,
// "", "  ") would, one chart at a time: the head is marshalled with an
// empty entries map, the entries are written where it was.
type indexJSONWriter struct {
	f *os.File
	w *bufio.Writer
	// tail is the head's JSON after the entries, from their closing brace.
	tail    []byte
	entries int
}

// entriesMark is how MarshalIndent writes an empty entries map at the
// top level; nested maps are indented deeper, so it occurs once.
const entriesMark = "\n  \"entries\": {}"

func (j *indexJSONWriter) head(x *repo.IndexFile) error {
	b, err := json.MarshalIndent(x, "", "  ")
	if err != nil {
		return err
	}
	if x.Entries == nil {
		_, err = j.w.Write(b)
		return err
	}
	i := bytes.Index(b, []byte(entriesMark))
	if i < 0 {
		return fmt.Errorf("marshalled index has no entries field")
	}
	cut := i + len(entriesMark) - 1 // before the closing brace
	j.tail = b[cut:]
	_, err = j.w.Write(b[:cut])
	return err
}

func (j *indexJSONWriter) entry(name string, cvs repo.ChartVersions) error {
	key, err := json.Marshal(name)
	if err != nil {
		return err
	}
	val, err := json.MarshalIndent(cvs, "    ", "  ")
	if err != nil {
		return err
	}
	sep := ",\n    "
	if j.entries == 0 {
		sep = "\n    "
	}
	j.entries++
	for _, b := range [][]byte{[]byte(sep), key, []byte(": "), val} {
		if _, err := j.w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func (j *indexJSONWriter) done() error {
	if j.entries > 0 {
		if _, err := j.w.WriteString("\n  "); err != nil {
			return err
		}
	}
	_, err := j.w.Write(j.tail)
	return err
}

func (j *indexJSONWriter) reset() error {
	j.w.Reset(j.f)
	j.tail, j.entries = nil, 0
	if err := j.f.Truncate(0); err != nil {
		return err
	}
	_, err := j.f.Seek(0, io.SeekStart)
	return err
}
