// Command image builds sourceraft's container image with ko into a tarball,
// without a Docker engine and without any network registry (`make image`).
//
// ko layers the Go binary onto a base image that it fetches from a registry.
// Its default base (cgr.dev/chainguard/static) cannot be pulled on the build
// machines, so this program builds the base itself: an empty image plus one
// layer with /etc/passwd and /etc/group declaring the non-root user 65532
// ("nonroot", as in distroless and Chainguard's static images), its home
// directory and a world-writable /tmp, configured to run as 65532:65532. It
// serves that base from go-containerregistry's in-memory registry on
// 127.0.0.1 for the length of the build, runs `ko build --push=false
// --tarball`, and stops. The base has no CA bundle: the binary carries its
// own fallback roots (golang.org/x/crypto/x509roots/fallback, imported by
// cmd/source-controller).
//
// Every timestamp in the base and in ko's layers and config is
// $SOURCE_DATE_EPOCH (mk/image.mk sets the last commit's time; 1970 when
// unset), so the same sources give a byte-identical tarball.
//
//	go run ./hack/image -ko bin/ko -image ghcr.io/sourceraft/source-controller:latest \
//		-o bin/source-controller-image.tar ./cmd/source-controller
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The user the image runs as; deploy/statefulset sets the same runAsUser,
// runAsGroup and fsGroup.
const (
	nonrootID   = 65532
	nonrootName = "nonroot"
	nonrootHome = "/home/nonroot"
)

func main() {
	koBin := flag.String("ko", "", "Path of the ko binary (required).")
	image := flag.String("image", "", "Name and tag the image is saved under in the tarball, e.g. ghcr.io/sourceraft/source-controller:latest (required).")
	out := flag.String("o", "", "Tarball to write (required); replaced only once the build succeeded.")
	platform := flag.String("platform", "linux/amd64", "os/arch of the image (a tarball holds one).")
	config := flag.String("config", "hack/image/ko.yaml", "ko configuration file (KO_CONFIG_PATH).")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -ko bin/ko -image repo:tag -o image.tar [flags] ./cmd/package\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *koBin == "" || *image == "" || *out == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(0)
	log.SetPrefix("image: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, build{
		ko: *koBin, image: *image, out: *out, platform: *platform, config: *config, pkg: flag.Arg(0),
	}); err != nil {
		log.Fatal(err)
	}
}

type build struct {
	ko, image, out, platform, config, pkg string
}

func run(ctx context.Context, b build) error {
	tag, err := name.NewTag(b.image, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("-image: %w", err)
	}
	plat, err := v1.ParsePlatform(b.platform)
	if err != nil {
		return fmt.Errorf("-platform: %w", err)
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	koBin, err := filepath.Abs(b.ko)
	if err != nil {
		return fmt.Errorf("-ko: %w", err)
	}
	out, err := filepath.Abs(b.out)
	if err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	config, err := filepath.Abs(b.config)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}

	base, err := baseImage(*plat, created)
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	reg, err := serveRegistry()
	if err != nil {
		return err
	}
	defer reg.close()
	baseRef, err := reg.push(ctx, base)
	if err != nil {
		return err
	}
	log.Printf("base %s on loopback", baseRef)

	// ko writes the tarball itself when it finishes; a temporary name keeps
	// a failed build from leaving a half-written file under the real one.
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	tmp := out + ".tmp"
	defer os.Remove(tmp)

	// --bare: the image is named KO_DOCKER_REPO exactly, not
	// KO_DOCKER_REPO/<import path>-<hash>; --tags gives it its tag.
	cmd := exec.CommandContext(ctx, koBin, "build",
		"--bare", "--tags="+tag.TagStr(),
		"--push=false", "--tarball="+tmp,
		"--platform="+plat.String(),
		"--sbom=none",
		b.pkg)
	cmd.Env = append(os.Environ(),
		"KO_DOCKER_REPO="+tag.Context().Name(),
		"KO_DEFAULTBASEIMAGE="+baseRef.String(),
		"KO_CONFIG_PATH="+config,
		// Set explicitly so a SOURCE_DATE_EPOCH-less run is reproducible too.
		"SOURCE_DATE_EPOCH="+strconv.FormatInt(created.Unix(), 10),
		"KO_DATA_DATE_EPOCH="+strconv.FormatInt(created.Unix(), 10),
		// No cache of base images outside this run: the base lives only as
		// long as the loopback registry.
		"KOCACHE=",
	)
	// ko prints the digest of the manifest it built, which names the base
	// with its loopback address (an annotation that does not go into the
	// tarball): the digest of the saved image is reported below instead.
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("ko build %s: %w", b.pkg, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ko build %s: %w", b.pkg, err)
	}
	copyErr := copyWithoutGitInfo(os.Stderr, stderr)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("ko build %s: %w", b.pkg, err)
	}
	if copyErr != nil {
		return fmt.Errorf("ko build %s: output: %w", b.pkg, copyErr)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("ko build %s: %w", b.pkg, err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	dig, err := img.Digest()
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	log.Printf("%s saved to %s: digest %s, image ID %s", tag, b.out, dig, id)
	return nil
}

// copyWithoutGitInfo copies ko's log to w, leaving out what ko reports
// about the git checkout (no tag, not a repository, and in a dirty tree the
// whole `git status`). ko gathers it only for {{.Git}} in ldflags
// templates, which ko.yaml does not use.
func copyWithoutGitInfo(w io.Writer, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	inDirty := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case inDirty:
			// The status ends with an empty line.
			inDirty = line != ""
			continue
		case strings.Contains(line, "git is in a dirty state"):
			inDirty = true
			continue
		case strings.Contains(line, "Tag info will not be available"),
			strings.Contains(line, "Git info will not be available"):
			continue
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			_, _ = io.Copy(io.Discard, r) // never leave ko blocked on a full pipe
			return err
		}
	}
	if err := sc.Err(); err != nil {
		_, _ = io.Copy(io.Discard, r)
		return err
	}
	return nil
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (https://reproducible-builds.org),
// or the Unix epoch when it is unset.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// baseImage is the scratch-like base: one layer with the users and the
// directories the controller needs, run as the non-root user.
func baseImage(plat v1.Platform, created time.Time) (v1.Image, error) {
	layerTar, err := baseLayer(created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "sourceraft hack/image: users, /tmp", Comment: "base"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = plat.OS, plat.Architecture, plat.Variant, plat.OSVersion
	id := strconv.Itoa(nonrootID)
	cf.Config.User = id + ":" + id
	cf.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// baseLayer is the base layer's uncompressed tar. Entries are in a fixed
// order with fixed owners and times, so its digest depends on created only.
func baseLayer(created time.Time) ([]byte, error) {
	id := strconv.Itoa(nonrootID)
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		nonrootName + ":x:" + id + ":" + id + ":" + nonrootName + ":" + nonrootHome + ":/sbin/nologin\n"
	group := "root:x:0:\n" +
		"nobody:x:65534:\n" +
		nonrootName + ":x:" + id + ":\n"
	entries := []struct {
		hdr  tar.Header
		body string
	}{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, body: passwd},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, body: group},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "home/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(nonrootHome, "/") + "/", Mode: 0o700, Uid: nonrootID, Gid: nonrootID}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "root/", Mode: 0o700}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.body))
		h.ModTime = created
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("layer %s: %w", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			return nil, fmt.Errorf("layer %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// loopbackRegistry is go-containerregistry's in-memory registry listening on
// 127.0.0.1 only. go-containerregistry (and so ko) speaks plain HTTP to
// loopback registries, so no certificate is needed.
type loopbackRegistry struct {
	addr string
	srv  *http.Server
	done chan error
}

func serveRegistry() (*loopbackRegistry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("registry: listen: %w", err)
	}
	r := &loopbackRegistry{
		addr: l.Addr().String(),
		// The registry logs every request by default.
		srv:  &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second},
		done: make(chan error, 1),
	}
	go func() { r.done <- r.srv.Serve(l) }()
	return r, nil
}

// push stores img in the registry and returns its reference by digest, so
// ko can only ever use this exact base.
func (r *loopbackRegistry) push(ctx context.Context, img v1.Image) (name.Digest, error) {
	repo, err := name.NewRepository(r.addr + "/sourceraft/base")
	if err != nil {
		return name.Digest{}, fmt.Errorf("registry: %w", err)
	}
	dig, err := img.Digest()
	if err != nil {
		return name.Digest{}, fmt.Errorf("base digest: %w", err)
	}
	ref := repo.Digest(dig.String())
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return name.Digest{}, fmt.Errorf("push base to %s: %w", r.addr, err)
	}
	return ref, nil
}

func (r *loopbackRegistry) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		log.Printf("registry: shutdown: %v", err)
	}
	if err := <-r.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("registry: %v", err)
	}
}
