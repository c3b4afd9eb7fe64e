package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// layerOf builds a tar.gz layer from headers, each file's body its Size
// bytes of 'x'.
func layerOf(hdrs ...*tar.Header) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range hdrs {
		_ = tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			_, _ = tw.Write(bytes.Repeat([]byte{'x'}, int(h.Size)))
		}
	}
	_ = tw.Close()
	_ = gz.Close()
	return buf.Bytes()
}

// FuzzExtractLayer feeds hostile layers to the extraction: whatever it
// accepts stays inside the directory, holds no symlink, device or
// hardlink outside it, and keeps to the size and entry limits.
func FuzzExtractLayer(f *testing.F) {
	const maxSize, maxEntries = 64 << 10, 16
	f.Add(layerOf(&tar.Header{Name: "app/deploy.yaml", Typeflag: tar.TypeReg, Size: 10, Mode: 0o644}))
	f.Add(layerOf(&tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Size: 3, Mode: 0o644}))
	f.Add(layerOf(&tar.Header{Name: "/abs", Typeflag: tar.TypeReg, Size: 3, Mode: 0o644}))
	f.Add(layerOf(&tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}))
	f.Add(layerOf(&tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}))
	f.Add(layerOf(&tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}))
	f.Add(layerOf(&tar.Header{Name: strings.Repeat("d/", 2000) + "f", Typeflag: tar.TypeReg, Size: 1}))
	f.Add(layerOf(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Size: 1 << 20, Mode: 0o644}))
	f.Add([]byte("not a layer"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		root := filepath.Join(dir, "root")
		err := extractLayer(bytes.NewReader(data), root, Limits{Untar: maxSize, Entries: maxEntries})
		var (
			size  int64
			files []fs.FileInfo
		)
		entries := 0
		walkErr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p == dir {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			if p != root && (!filepath.IsLocal(rel) || !strings.HasPrefix(p, root+string(os.PathSeparator))) {
				t.Fatalf("extraction wrote %s outside %s", p, root)
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				t.Fatalf("extraction left a symlink %s", p)
			case info.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
				t.Fatalf("extraction made a special file %s (%v)", p, info.Mode())
			case info.Mode().IsRegular():
				size += info.Size()
				entries++
				files = append(files, info)
			}
			return nil
		})
		if walkErr != nil {
			t.Fatal(walkErr)
		}
		// A hard link must join two files of the layer, never one outside it.
		for i, a := range files {
			if st, ok := a.Sys().(*syscall.Stat_t); !ok || st.Nlink < 2 {
				continue
			}
			shared := false
			for j, b := range files {
				shared = shared || i != j && os.SameFile(a, b)
			}
			if !shared {
				t.Fatalf("%s is a hard link to a file outside the layer", a.Name())
			}
		}
		if err == nil && (size > maxSize || entries > maxEntries) {
			t.Fatalf("accepted a layer of %d bytes in %d files, limits %d and %d", size, entries, maxSize, maxEntries)
		}
	})
}
