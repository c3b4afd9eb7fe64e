package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// cpuProfile records a CPU profile of the replica whose metrics listener
// is addr (started with --pprof) for d, into the -profile directory as
// name.pprof, in the background; wait returns once it is written. Without
// -profile it does nothing. A failed profile is reported, never fatal:
// it only explains a figure.
func (b *bench) cpuProfile(ctx context.Context, addr, name string, d time.Duration) (wait func()) {
	if b.cfg.profile == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		secs := max(1, int(d.Round(time.Second)/time.Second))
		b.saveProfile(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), name, d+30*time.Second)
	}()
	return func() { <-done }
}

// heapProfile saves the replica's heap profile (in-use and allocated
// space since start) as name.pprof in the -profile directory.
func (b *bench) heapProfile(ctx context.Context, addr, name string) {
	if b.cfg.profile != "" {
		b.saveProfile(ctx, "http://"+addr+"/debug/pprof/heap", name, 30*time.Second)
	}
}

func (b *bench) saveProfile(ctx context.Context, url, name string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		f, err := os.Create(filepath.Join(b.cfg.profile, name+".pprof"))
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "   profile %s: %v\n", name, err)
	}
}
