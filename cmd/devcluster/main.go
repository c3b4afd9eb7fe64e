// Command devcluster runs a replicated sourceraft cluster on this machine:
// N real source-controller processes on loopback with mTLS between them.
// It stores a sample artifact through the internal API, prints its URL on
// every replica, and keeps the cluster up until interrupted.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

func main() {
	bin := flag.String("binary", "bin/source-controller", "source-controller executable")
	dir := flag.String("dir", ".run", "directory for replica data, certificates and logs")
	replicas := flag.Int("replicas", 3, "number of replicas")
	flag.Parse()
	if err := run(*bin, *dir, *replicas); err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func run(bin, dir string, replicas int) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	c, err := cluster.New(cluster.Options{Binary: bin, Dir: dir, Replicas: replicas})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	leader, err := c.WaitLeader(wctx)
	if err != nil {
		return fmt.Errorf("%w (replica logs are in %s/replica-*/log)", err, dir)
	}
	fmt.Printf("cluster of %d replicas up; leader %s\n", replicas, c.Replicas[leader].ID)

	sample, err := sampleArchive()
	if err != nil {
		return err
	}
	// Stored through a follower, which forwards to the leader.
	via := (leader + 1) % replicas
	res, err := c.Put(wctx, via, "gitrepository/default/sample/sample.tar.gz", bytes.NewReader(sample), int64(len(sample)))
	if err != nil {
		return fmt.Errorf("store sample artifact via %s: %w", c.Replicas[via].ID, err)
	}
	fmt.Printf("stored %s (%d bytes, %s) via %s\n", res.Path, res.Size, res.Digest, c.Replicas[via].ID)
	for i, r := range c.Replicas {
		u := c.ArtifactURL(i, res.Path)
		got, err := fetchDigest(wctx, u)
		if err != nil {
			return fmt.Errorf("%s: %w", r.ID, err)
		}
		fmt.Printf("  %-10s %s  %s\n", r.ID, u, got)
	}
	fmt.Printf("internal API: curl -H 'Authorization: Bearer %s' http://%s/v1/cluster\n", c.Token, c.Replicas[0].APIAddr)
	fmt.Println("running; Ctrl-C stops the cluster")
	<-ctx.Done()
	return nil
}

// sampleArchive is a small tar.gz like the ones Flux sources produce.
func sampleArchive() ([]byte, error) {
	files := map[string]string{
		"kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- configmap.yaml\n",
		"configmap.yaml":     "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sourceraft-sample\ndata:\n  greeting: served by every replica\n",
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range []string{"configmap.yaml", "kustomization.yaml"} {
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fetchDigest(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
