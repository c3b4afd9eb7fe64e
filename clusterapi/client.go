package clusterapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client calls replicas' internal APIs. It holds no address: a replica
// asks whichever peer it needs at the time, so every call names one.
type Client struct {
	hc    *http.Client
	token string
}

// NewClient returns a client sending token as its bearer token through
// hc, whose timeout bounds every call; nil means http.DefaultClient.
func NewClient(hc *http.Client, token string) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{hc: hc, token: token}
}

// Error is a replica's answer other than the one the call expects.
type Error struct {
	Method, Path, Addr string
	// Code is the HTTP status the replica answered.
	Code int
	// Body is the start of the answer, the replica's error message.
	Body string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s on %s: HTTP %d: %s", e.Method, e.Path, e.Addr, e.Code, e.Body)
}

// StatusCode is the HTTP status carried by err's *Error, 0 when err is no
// such answer (a transport failure, a cancelled call).
func StatusCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Status fetches the replica's Status (GET /v1/cluster).
func (c *Client) Status(ctx context.Context, addr string) (Status, error) {
	var s Status
	return s, c.getJSON(ctx, addr, ClusterPath, &s)
}

// ContentHash fetches the hash of the replica's applied state (GET
// /v1/content-hash); the replica reads its whole store for it.
func (c *Client) ContentHash(ctx context.Context, addr string) (ContentHash, error) {
	var h ContentHash
	return h, c.getJSON(ctx, addr, ContentHashPath, &h)
}

// Register records p's addresses (PUT /v1/nodes/<p.ID>); a replica that
// does not lead forwards it to the leader, which also adds a node new to
// the configuration as a non-voter.
func (c *Client) Register(ctx context.Context, addr string, p Peer) error {
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("register %s: %w", p.ID, err)
	}
	req, err := c.newRequest(ctx, addr, http.MethodPut, NodePath(p.ID), bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.send(req, http.StatusNoContent)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// RemoveNode takes node id out of the cluster (DELETE /v1/nodes/<id>),
// through whichever replica addr is. Asked to remove itself, the leader
// answers 503 while it hands leadership over: retry.
func (c *Client) RemoveNode(ctx context.Context, addr, id string) error {
	resp, err := c.do(ctx, addr, http.MethodDelete, NodePath(id), nil, 0, http.StatusNoContent)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// PutArtifact stores size bytes of body as the artifact at path, a
// <kind>/<namespace>/<name>/<file> path (PUT /v1/artifacts/<path>); size
// -1 sends the body chunked. Only ctx and the client's timeout bound the
// upload.
func (c *Client) PutArtifact(ctx context.Context, addr, path string, body io.Reader, size int64) (PutResult, error) {
	var res PutResult
	p := ArtifactPath(path)
	resp, err := c.do(ctx, addr, http.MethodPut, p, body, size, http.StatusCreated)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res, fmt.Errorf("PUT %s on %s: decoding answer: %w", p, addr, err)
	}
	return res, nil
}

func (c *Client) getJSON(ctx context.Context, addr, path string, v any) error {
	resp, err := c.do(ctx, addr, http.MethodGet, path, nil, 0, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s on %s: decoding answer: %w", path, addr, err)
	}
	return nil
}

// maxErrorBody bounds how much of an unexpected answer an Error keeps.
const maxErrorBody = 4 << 10

// do sends an authenticated request for the escaped path to the replica
// at addr and returns the response if its status is want, else an *Error.
func (c *Client) do(ctx context.Context, addr, method, path string, body io.Reader, size int64, want int) (*http.Response, error) {
	req, err := c.newRequest(ctx, addr, method, path, body, size)
	if err != nil {
		return nil, err
	}
	return c.send(req, want)
}

func (c *Client) newRequest(ctx context.Context, addr, method, path string, body io.Reader, size int64) (*http.Request, error) {
	if body == nil {
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(ctx, method, URL(addr, path), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s on %s: %w", method, path, addr, err)
	}
	req.ContentLength = size
	req.Header.Set("Authorization", Authorization(c.token))
	return req, nil
}

func (c *Client) send(req *http.Request, want int) (*http.Response, error) {
	method, path, addr := req.Method, req.URL.EscapedPath(), req.URL.Host
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err // a *url.Error, naming method and URL
	}
	if resp.StatusCode != want {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, &Error{Method: method, Path: path, Addr: addr, Code: resp.StatusCode, Body: strings.TrimSpace(string(msg))}
	}
	return resp, nil
}
