package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// writeTree creates files (path → content) under a new temp dir; a path
// ending in "/" is an empty directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if p[len(p)-1] == '/' {
			if err := os.MkdirAll(full, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func archiveBytes(t *testing.T, dir string, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	st, err := Write(dir, &buf, opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if st.Written != int64(buf.Len()) {
		t.Fatalf("Stats.Written = %d, wrote %d", st.Written, buf.Len())
	}
	return buf.Bytes()
}

type tarEntry struct {
	Name    string
	Type    byte
	Mode    int64
	Content string
}

// readArchive decodes an archive and checks the fields every entry must
// have normalised.
func readArchive(t *testing.T, data []byte) []tarEntry {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" || !gz.ModTime.IsZero() || gz.Comment != "" {
		t.Errorf("gzip header not fixed: name %q, time %v, comment %q", gz.Name, gz.ModTime, gz.Comment)
	}
	tr := tar.NewReader(gz)
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: owner not zeroed: %d/%d %q/%q", hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
		if !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mod time %v, want the epoch", hdr.Name, hdr.ModTime)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{Name: hdr.Name, Type: hdr.Typeflag, Mode: hdr.Mode, Content: string(body)})
	}
	return out
}

func names(es []tarEntry) []string {
	var n []string
	for _, e := range es {
		n = append(n, e.Name)
	}
	return n
}

func TestWriteIsDeterministic(t *testing.T) {
	files := map[string]string{
		"b.yaml":              "b",
		"a/z.txt":             "z",
		"a/b/c.txt":           "c",
		"a.txt":               "a",
		"empty/":              "",
		"deep/er/and/deeper/": "",
	}
	one := writeTree(t, files)
	two := writeTree(t, files)
	// Different mod times and permissions in the second tree must not matter.
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	err := filepath.WalkDir(two, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			if err := os.Chmod(p, 0o664); err != nil {
				return err
			}
		}
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
	fi1, err1 := os.Stat(filepath.Join(one, "a.txt"))
	fi2, err2 := os.Stat(filepath.Join(two, "a.txt"))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if fi1.Mode() == fi2.Mode() || fi1.ModTime().Equal(fi2.ModTime()) {
		t.Fatalf("the trees do not differ in mode and time: %v %v, %v %v", fi1.Mode(), fi1.ModTime(), fi2.Mode(), fi2.ModTime())
	}
	a, b := archiveBytes(t, one, Options{}), archiveBytes(t, two, Options{})
	if !bytes.Equal(a, b) {
		t.Fatal("the same tree archived twice gave different bytes")
	}
	if again := archiveBytes(t, one, Options{}); !bytes.Equal(a, again) {
		t.Fatal("archiving the same directory twice gave different bytes")
	}

	got := names(readArchive(t, a))
	want := []string{"a/", "a.txt", "a/b/", "a/b/c.txt", "a/z.txt", "b.yaml", "deep/", "deep/er/", "deep/er/and/", "deep/er/and/deeper/", "empty/"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries\n got %q\nwant %q", got, want)
	}
}

func TestWriteNormalisesModes(t *testing.T) {
	dir := writeTree(t, map[string]string{"run.sh": "#!/bin/sh", "data.txt": "x", "sub/": ""})
	if err := os.Chmod(filepath.Join(dir, "run.sh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "data.txt"), 0o400); err != nil {
		t.Fatal(err)
	}
	want := map[string]tarEntry{
		"data.txt": {Name: "data.txt", Type: tar.TypeReg, Mode: 0o644, Content: "x"},
		"run.sh":   {Name: "run.sh", Type: tar.TypeReg, Mode: 0o755, Content: "#!/bin/sh"},
		"sub/":     {Name: "sub/", Type: tar.TypeDir, Mode: 0o755},
	}
	for _, e := range readArchive(t, archiveBytes(t, dir, Options{})) {
		if w, ok := want[e.Name]; !ok || w != e {
			t.Errorf("entry %+v, want %+v", e, w)
		}
	}
}

func TestWriteSkipsSymlinks(t *testing.T) {
	outside := writeTree(t, map[string]string{"secret.txt": "do not leak", "secrets/key": "do not leak"})
	dir := writeTree(t, map[string]string{"ok.txt": "ok"})
	for name, target := range map[string]string{
		"escape-file": filepath.Join(outside, "secret.txt"),
		"escape-dir":  filepath.Join(outside, "secrets"),
		"relative":    "../../../../../../etc/passwd",
		"inside":      "ok.txt",
		"dangling":    "nowhere",
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	data := archiveBytes(t, dir, Options{})
	es := readArchive(t, data)
	if got := names(es); !reflect.DeepEqual(got, []string{"ok.txt"}) {
		t.Fatalf("entries %q, want only ok.txt", got)
	}
	if bytes.Contains(data, []byte("do not leak")) {
		t.Fatal("archive contains the content of a symlink target")
	}
}

func TestWriteSymlinkedRootIsRefused(t *testing.T) {
	target := writeTree(t, map[string]string{"a": "a"})
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(link, io.Discard, Options{}); err == nil {
		t.Fatal("archiving a symlinked root succeeded")
	}
}

func TestWriteLimits(t *testing.T) {
	dir := writeTree(t, map[string]string{"a": "12345", "b": "67890", "c/d": "x"})
	tests := []struct {
		name      string
		opts      Options
		wantLimit string
	}{
		{"size exceeded", Options{MaxSize: 10}, LimitSize},
		{"entries exceeded", Options{MaxEntries: 3}, LimitEntries},
		{"size exactly at limit", Options{MaxSize: 11}, ""},
		{"entries exactly at limit", Options{MaxEntries: 4}, ""},
		{"ignored files do not count", Options{MaxSize: 6, Filter: func(p string, _ bool) bool { return p == "a" || p == "b" }}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			st, err := Write(dir, &buf, tt.opts)
			if tt.wantLimit == "" {
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				return
			}
			var le *LimitError
			if !errors.As(err, &le) || !errors.Is(err, ErrLimitExceeded) {
				t.Fatalf("error %v, want a *LimitError", err)
			}
			if le.Limit != tt.wantLimit || le.Actual <= le.Max {
				t.Fatalf("LimitError %+v, want limit %q with actual above max", le, tt.wantLimit)
			}
			if buf.Len() != 0 || st != (Stats{}) {
				t.Fatalf("wrote %d bytes (stats %+v) before failing on a limit", buf.Len(), st)
			}
		})
	}
}

func TestIgnoreFilter(t *testing.T) {
	dir := writeTree(t, map[string]string{
		".git/HEAD":               "ref: refs/heads/main",
		".github/workflows/x.yml": "ci",
		".sourceignore":           "*.secret\n# comment\n/build/\n",
		"app/deploy.yaml":         "kind: Deployment",
		"app/key.secret":          "s",
		"app/logo.png":            "png",
		"app/.sourceignore":       "local.txt\n",
		"app/local.txt":           "l",
		"local.txt":               "kept: the nested rule is scoped to app/",
		"build/out.bin":           "b",
		"docs/readme.md":          "d",
		"keep.secret.txt":         "k",
	})
	spec := "docs/\n!app/logo.png\n"
	filter, err := IgnoreFilter(dir, &spec)
	if err != nil {
		t.Fatal(err)
	}
	got := names(readArchive(t, archiveBytes(t, dir, Options{Filter: filter})))
	want := []string{".sourceignore", "app/", "app/.sourceignore", "app/deploy.yaml", "app/logo.png", "keep.secret.txt", "local.txt"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries\n got %q\nwant %q", got, want)
	}

	// Without spec.ignore the defaults (images, docs kept) apply.
	filter, err = IgnoreFilter(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	got = names(readArchive(t, archiveBytes(t, dir, Options{Filter: filter})))
	want = []string{".sourceignore", "app/", "app/.sourceignore", "app/deploy.yaml", "docs/", "docs/readme.md", "keep.secret.txt", "local.txt"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries without spec.ignore\n got %q\nwant %q", got, want)
	}
}
