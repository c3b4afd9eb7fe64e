// Package image checks the image `make image` writes: that it is the image
// deploy/statefulset runs, that the pod's securityContext can run it, and
// that the binary in it is a static, working source-controller.
//
// The tests run only when SOURCERAFT_IMAGE names the tarball, as
// `make image-test` does after building it; they are skipped otherwise (so
// `go test ./...` needs no image), and fail when the variable is set but the
// tarball is missing or unreadable.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/sourceraft/sourceraft/internal/testenv"
)

// The CA bundle the binary carries, since the image has no /etc/ssl.
const fallbackRoots = "golang.org/x/crypto/x509roots/fallback"

// tarballPath is $SOURCERAFT_IMAGE; the test is skipped when it is unset.
func tarballPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SOURCERAFT_IMAGE")
	if p == "" {
		t.Skip("SOURCERAFT_IMAGE is unset; `make image-test` builds the image and sets it")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("SOURCERAFT_IMAGE: %v (build it with `make image`)", err)
	}
	return p
}

// manager is the manager container of deploy/statefulset's StatefulSet as
// `kubectl apply -k` would create it (kustomize's images: entry applied),
// with the pod's securityContext.
func manager(t *testing.T) (corev1.Container, *corev1.PodSecurityContext) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "statefulset")
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	for _, r := range rm.Resources() {
		if r.GetKind() != "StatefulSet" || r.GetName() != "source-controller" {
			continue
		}
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("StatefulSet: %v", err)
		}
		var sts appsv1.StatefulSet
		if err := json.Unmarshal(data, &sts); err != nil {
			t.Fatalf("StatefulSet: %v", err)
		}
		spec := sts.Spec.Template.Spec
		for _, c := range spec.Containers {
			if c.Name == "manager" {
				return c, spec.SecurityContext
			}
		}
		t.Fatal("StatefulSet source-controller has no container manager")
	}
	t.Fatalf("kustomize build %s: no StatefulSet source-controller", dir)
	return corev1.Container{}, nil
}

// loadImage opens the tarball's image tagged as deploy/statefulset's
// manager container references it.
func loadImage(t *testing.T) (v1.Image, name.Tag) {
	t.Helper()
	p := tarballPath(t)
	c, _ := manager(t)
	tag, err := name.NewTag(c.Image, name.StrictValidation)
	if err != nil {
		t.Fatalf("deploy/statefulset image %q: %v", c.Image, err)
	}
	img, err := tarball.ImageFromPath(p, &tag)
	if err != nil {
		t.Fatalf("%s has no image %s, the one deploy/statefulset runs: %v", p, tag, err)
	}
	return img, tag
}

// The tarball holds exactly one image, under the name deploy/statefulset
// references, so loading it into a cluster satisfies the StatefulSet.
func TestTagMatchesDeploy(t *testing.T) {
	p := tarballPath(t)
	_, tag := loadImage(t)
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(m) != 1 {
		t.Fatalf("%s holds %d images, want 1", p, len(m))
	}
	if !slices.Equal(m[0].RepoTags, []string{tag.String()}) {
		t.Errorf("%s tags %v, want [%s]", p, m[0].RepoTags, tag)
	}
}

// linux/amd64, an entrypoint, and a numeric non-root user equal to the
// runAsUser (and runAsGroup) of deploy/statefulset: runAsNonRoot needs a
// numeric user in the image, and the two must not disagree.
func TestConfig(t *testing.T) {
	img, _ := loadImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Platform().String(); got != "linux/amd64" {
		t.Errorf("platform %s, want linux/amd64", got)
	}
	if len(cf.Config.Entrypoint) == 0 || !path.IsAbs(cf.Config.Entrypoint[0]) {
		t.Errorf("entrypoint %q, want an absolute path", cf.Config.Entrypoint)
	}
	uid, gid, err := parseUser(cf.Config.User)
	if err != nil {
		t.Fatal(err)
	}
	if uid == 0 {
		t.Errorf("image user %q is root", cf.Config.User)
	}
	_, psc := manager(t)
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil {
		t.Fatal("deploy/statefulset: pod securityContext lacks runAsNonRoot: true and runAsUser")
	}
	if int64(uid) != *psc.RunAsUser {
		t.Errorf("image user %d, deploy/statefulset runAsUser %d", uid, *psc.RunAsUser)
	}
	if psc.RunAsGroup != nil && gid >= 0 && int64(gid) != *psc.RunAsGroup {
		t.Errorf("image group %d, deploy/statefulset runAsGroup %d", gid, *psc.RunAsGroup)
	}
}

// parseUser reads a numeric "uid" or "uid:gid" (gid -1 when absent); a user
// name cannot be checked against runAsNonRoot by the kubelet.
func parseUser(u string) (uid, gid int, err error) {
	us, gs, hasGroup := strings.Cut(u, ":")
	if uid, err = strconv.Atoi(us); err != nil {
		return 0, 0, fmt.Errorf("image user %q is not numeric: %w", u, err)
	}
	gid = -1
	if hasGroup {
		if gid, err = strconv.Atoi(gs); err != nil {
			return 0, 0, fmt.Errorf("image group %q is not numeric: %w", u, err)
		}
	}
	return uid, gid, nil
}

// rootfs is the image's flattened filesystem extracted into a directory.
type rootfs struct {
	dir   string
	modes map[string]os.FileMode // by absolute path in the image
	cf    *v1.ConfigFile
}

func extract(t *testing.T) rootfs {
	t.Helper()
	img, _ := loadImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	fs := rootfs{dir: t.TempDir(), modes: map[string]os.FileMode{}, cf: cf}
	// The image's root directory, which the layers do not list: chrooted,
	// the image's user must be able to walk it.
	if err := os.Chmod(fs.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("image filesystem: %v", err)
		}
		rel := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if !filepath.IsLocal(rel) {
			t.Fatalf("image filesystem: entry %q outside the root", h.Name)
		}
		fs.modes["/"+rel] = h.FileInfo().Mode()
		dst := filepath.Join(fs.dir, filepath.FromSlash(rel))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatalf("extract %s: %v", h.Name, err)
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(h.Linkname, dst); err != nil {
				t.Fatal(err)
			}
		default:
			continue
		}
		// Set after creation, umask aside: /tmp needs its 1777.
		if h.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(dst, h.FileInfo().Mode()&(os.ModePerm|os.ModeSticky|os.ModeSetuid|os.ModeSetgid)); err != nil {
				t.Fatal(err)
			}
		}
		if root {
			if err := os.Lchown(dst, h.Uid, h.Gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return fs
}

// The filesystem a pod of deploy/statefulset needs: the entrypoint, the
// user in /etc/passwd (for anything that looks up the current user) and a
// world-writable /tmp (the StatefulSet mounts an emptyDir over it; run
// without that, the binary still has scratch space).
func TestFilesystem(t *testing.T) {
	fs := extract(t)
	entry := fs.cf.Config.Entrypoint[0]
	mode, ok := fs.modes[entry]
	if !ok {
		t.Fatalf("entrypoint %s is not in the image's layers", entry)
	}
	if !mode.IsRegular() || mode.Perm()&0o111 == 0 {
		t.Errorf("entrypoint %s: mode %v, want an executable file", entry, mode)
	}
	if m := fs.modes["/tmp"]; !m.IsDir() || m&os.ModeSticky == 0 || m.Perm() != 0o777 {
		t.Errorf("/tmp: mode %v, want drwxrwxrwt", m)
	}
	uid, _, err := parseUser(fs.cf.Config.User)
	if err != nil {
		t.Fatal(err)
	}
	passwd, err := os.ReadFile(filepath.Join(fs.dir, "etc", "passwd"))
	if err != nil {
		t.Fatalf("/etc/passwd: %v", err)
	}
	found := false
	for line := range strings.Lines(string(passwd)) {
		if f := strings.Split(strings.TrimSpace(line), ":"); len(f) == 7 && f[2] == strconv.Itoa(uid) {
			found = true
		}
	}
	if !found {
		t.Errorf("/etc/passwd has no user %d:\n%s", uid, passwd)
	}
}

// The entrypoint is a static Go binary (the image has no libc and no
// loader), built without cgo, carrying its own CA roots for HTTPS sources.
//
// That the roots are used is not observed here (the binary dials no HTTPS
// server on its own at start); their presence in the build is checked, and
// x509roots/fallback installs them whenever the system has no roots.
func TestStaticBinary(t *testing.T) {
	fs := extract(t)
	bin := filepath.Join(fs.dir, filepath.FromSlash(fs.cf.Config.Entrypoint[0]))
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("entrypoint: %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("entrypoint is built for %v, want x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("entrypoint is dynamically linked: it has a program interpreter")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("entrypoint links shared libraries %v (%v)", libs, err)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("entrypoint build info: %v", err)
	}
	if info.Path != "github.com/sourceraft/sourceraft/cmd/source-controller" {
		t.Errorf("entrypoint is %s, want sourceraft's source-controller", info.Path)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" {
		t.Errorf("entrypoint built with CGO_ENABLED=%q, want 0", settings["CGO_ENABLED"])
	}
	if !slices.ContainsFunc(info.Deps, func(m *debug.Module) bool { return m.Path == fallbackRoots }) {
		t.Errorf("entrypoint does not embed %s: HTTPS sources would fail in an image without /etc/ssl", fallbackRoots)
	}
}

// The binary from the image starts as a single-node cluster on loopback
// ports, becomes ready, and stops cleanly on SIGTERM. Run as root (as
// `make test` is on CI), it runs as the pod would: chrooted into the image's
// filesystem, as the image's user, its data under the image's /tmp, the
// environment from the image's config plus the StatefulSet's.
func TestRuns(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("the image is linux/amd64; this is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	fs := extract(t)
	c, _ := manager(t)
	entry := fs.cf.Config.Entrypoint[0]

	cmd := exec.Command(entry)
	var dataDir string
	if os.Geteuid() == 0 {
		uid, gid, err := parseUser(fs.cf.Config.User)
		if err != nil {
			t.Fatal(err)
		}
		if gid < 0 {
			gid = uid
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Chroot:     fs.dir,
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		}
		cmd.Dir = "/"
		dataDir = "/tmp/data"
	} else {
		t.Log("not root: the binary runs on the host filesystem as this user, not chrooted into the image")
		cmd.Path = filepath.Join(fs.dir, filepath.FromSlash(entry))
		dataDir = filepath.Join(t.TempDir(), "data")
	}
	ports := freePorts(t, 5)
	addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
	health := addr(3)
	cmd.Args = append(append([]string{entry}, fs.cf.Config.Cmd...),
		"--node-id=image-test",
		"--peers=image-test="+addr(0),
		"--raft-addr="+addr(0),
		"--raft-advertise-addr="+addr(0),
		"--raft-insecure",
		"--storage-path="+dataDir,
		"--storage-addr="+addr(1),
		"--api-addr="+addr(2),
		"--health-addr="+health,
		"--metrics-addr="+addr(4),
	)
	cmd.Env = slices.Clone(fs.cf.Config.Env)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
		}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s from the image: %v", entry, err)
	}
	var waitErr error // set before exited is closed
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("source-controller output:\n%s", out.String())
		}
	})

	for _, p := range []string{"/healthz", "/readyz"} {
		if err := waitOK(exited, "http://"+health+p, time.Minute); err != nil {
			if errors.Is(err, errExited) {
				err = fmt.Errorf("%w: %v", err, waitErr)
			}
			t.Fatalf("%s: %v", p, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("after SIGTERM: %v", waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
	if !bytes.Contains(out.Bytes(), []byte("source-controller started")) {
		t.Errorf("no start message in the output")
	}
	if cmd.SysProcAttr != nil {
		// Chrooted: the store must be in the image's /tmp, owned by its user.
		st, err := os.Stat(filepath.Join(fs.dir, "tmp", "data"))
		if err != nil {
			t.Fatalf("data directory in the image's /tmp: %v", err)
		}
		if owner := st.Sys().(*syscall.Stat_t).Uid; owner != cmd.SysProcAttr.Credential.Uid {
			t.Errorf("data directory owned by %d, want the image user %d", owner, cmd.SysProcAttr.Credential.Uid)
		}
	}
}

var errExited = errors.New("the process exited")

// waitOK polls url until it answers 200, the process exits (exited is
// closed), or timeout.
func waitOK(exited <-chan struct{}, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		select {
		case <-exited:
			return fmt.Errorf("%w before %s answered 200", errExited, url)
		case <-ctx.Done():
			return fmt.Errorf("no 200 from %s within %v; last: %s", url, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePorts returns n loopback ports that were free a moment ago; they are
// held together so no two are the same.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
