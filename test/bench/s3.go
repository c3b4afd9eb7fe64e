package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/minioserver"
)

// s3Modes are the ways a replica of the S3 backend serves: from its
// cache (every request after the first a hit), from the bucket on every
// request (no cache), and by redirecting to a pre-signed URL (the load
// generator follows it to MinIO).
var s3Modes = []struct {
	name string
	args []string
}{
	{"cache_hit", []string{"--s3-cache-size=4Gi"}},
	{"stream", []string{"--s3-cache-size=0"}},
	{"redirect", []string{"--s3-cache-size=0", "--storage-presign=15m"}},
}

// s3 measures the S3 backend against MinIO on loopback (its own process,
// as the replicas are): serving the serve phase's artifacts (same sizes
// and content) in each of s3Modes beside http.FileServer in the same run,
// as the serve phase measures the raft backend, and the leader's memory
// storing 1 GiB through the bucket.
func (b *bench) s3(ctx context.Context) error {
	dir := filepath.Join(b.root, "minio")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	srv, err := minioserver.StartIn(dir, minioserver.Options{})
	if err != nil {
		return err
	}
	defer srv.Kill()
	const bucket = "bench"
	if err := srv.Client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		return err
	}
	creds, err := minioserver.WriteCredentials(dir, minioserver.Password)
	if err != nil {
		return err
	}
	args := []string{"--storage-backend=s3", "--s3-endpoint=" + srv.Endpoint, "--s3-bucket=" + bucket, "--s3-insecure",
		"--s3-path-style", "--s3-credentials-file=" + creds, fmt.Sprintf("--max-artifact-size=%d", 2<<30)}
	return b.withCluster(ctx, "cluster-s3", append(args, s3Modes[0].args...), func(c *cluster.Cluster) error {
		fsDir := filepath.Join(b.root, "fileserver-s3")
		fs, err := startFileServer(ctx, fsDir)
		if err != nil {
			return err
		}
		defer fs.stop()
		gen := newLoadGen(b.cfg.clients, b.cfg.warmup, b.cfg.duration)
		defer gen.close()

		paths := make([]string, len(serveSizes))
		for i, sz := range serveSizes[:3] { // 100 MiB bodies would need minutes per round here
			content := randomContent(b.cfg.seed*1000+uint64(i), sz.size)
			paths[i] = fmt.Sprintf("gitrepository/bench/s3-%s/artifact.tar.gz", sz.name)
			if _, err := storeEverywhere(ctx, c, paths[i], content); err != nil {
				return err
			}
			local := filepath.Join(fsDir, filepath.FromSlash(paths[i]))
			if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(local, content, 0o644); err != nil {
				return err
			}
		}
		for m, mode := range s3Modes {
			if m > 0 {
				if err := restartWith(ctx, c, append(args, mode.args...)); err != nil {
					return fmt.Errorf("restart for %s: %w", mode.name, err)
				}
			}
			for i, sz := range serveSizes[:3] {
				if err := b.s3Serve(ctx, c, gen, fs, mode.name, sz.name, paths[i], randomContent(b.cfg.seed*1000+uint64(i), sz.size)); err != nil {
					return err
				}
			}
		}
		return b.rssStore(ctx, c, "s3_store_1gib_", 1<<30, b.cfg.seed*1000+300)
	})
}

// restartWith stops every replica, gives them args and starts them again
// on their data, then waits for a leader with everything applied.
func restartWith(ctx context.Context, c *cluster.Cluster, args []string) error {
	c.SetArgs(args)
	for i := range c.Replicas {
		c.Stop(i)
	}
	for i := range c.Replicas {
		if err := c.StartReplica(i); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	leader, err := c.WaitLeader(wctx)
	if err != nil {
		return err
	}
	return waitAllApplied(ctx, c, leader, 60*time.Second)
}

// s3Serve measures a follower serving path in one mode beside the
// FileServer, alternating the two as the serve phase does.
func (b *bench) s3Serve(ctx context.Context, c *cluster.Cluster, gen *loadGen, fs *fileServer, mode, size, path string, content []byte) error {
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	f, err := follower(c, leader)
	if err != nil {
		return err
	}
	gen.clients = b.cfg.clients
	base := &series{name: "fileserver", url: fs.url + "/" + path, pid: fs.pid}
	subj := &series{name: "s3 " + mode, url: c.ArtifactURL(f, path), pid: c.PID(f)}
	for _, s := range []*series{base, subj} {
		if err := gen.verify(ctx, s.url, content); err != nil {
			return err
		}
	}
	for round := range b.cfg.rounds {
		for _, s := range []*series{base, subj} {
			if err := s.measure(ctx, gen, int64(len(content))); err != nil {
				return fmt.Errorf("%s %s round %d: %w", s.name, size, round+1, err)
			}
			fmt.Fprintf(os.Stderr, "   %-6s %-14s round %d: %8.1f req/s %8.1f MB/s\n", size, s.name, round+1, s.rps[round], s.mbs[round])
		}
	}
	bm, sm := median(base.rps), median(subj.rps)
	prefix := "s3_serve_" + mode + "_" + size
	b.res.set(prefix+"_ratio_vs_fileserver", round(sm/bm, 3))
	b.res.set(prefix+"_follower_req_per_s", round(sm, 1))
	b.res.set(prefix+"_fileserver_req_per_s", round(bm, 1))
	b.res.set(prefix+"_follower_mb_per_s", round(median(subj.mbs), 1))
	b.res.set(prefix+"_follower_cpu_seconds_per_gb", round(median(subj.cpuPerGB), 3))
	b.res.detail("s3 "+mode+" "+size, "%.1f req/s (median of %v), %.3f× the FileServer's %.1f", sm, roundAll(subj.rps, 1), sm/bm, bm)
	return nil
}
