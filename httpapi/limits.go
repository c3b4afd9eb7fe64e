package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sourceraft/sourceraft/metrics"
)

// Limits keep one listener available to honest clients, however slow,
// while bounding what a client that stalls can hold. A zero field
// disables its limit.
type Limits struct {
	// MaxConnections bounds the connections open at once; beyond it a new
	// connection is answered 503 with Retry-After and closed.
	MaxConnections int
	// WriteIdleTimeout cuts a connection whose client accepts less than
	// MinProgress bytes of a response within this long. The deadline is
	// renewed whenever that much moved, so a slow consumer is never cut.
	WriteIdleTimeout time.Duration
	// ReadIdleTimeout does the same for request bodies, and also bounds
	// the wait for request headers.
	ReadIdleTimeout time.Duration
	// MaxRanges is how many ranges a Range header may ask for; with more
	// the header is ignored and the whole artifact is served with 200, as
	// RFC 9110 allows a server to.
	MaxRanges int
}

// MinProgress is the least a connection must move, in either direction,
// per idle timeout to count as making progress: about 34 bytes/s with a
// 30 s timeout, so only clients that stall or trickle are cut.
const MinProgress = 1 << 10

// defaultReadHeaderTimeout bounds the wait for request headers when
// ReadIdleTimeout does not bound it more tightly.
const defaultReadHeaderTimeout = 10 * time.Second

// Label values of metrics.HTTPLimited.
const (
	limitConnections = "max_connections"
	limitWriteIdle   = "write_idle_timeout"
	limitReadIdle    = "read_idle_timeout"
	limitRanges      = "max_ranges"
	limitBadRange    = "empty_suffix_range"
	limitMethod      = "unknown_method"
)

func (l Limits) readHeaderTimeout() time.Duration {
	if l.ReadIdleTimeout > 0 && l.ReadIdleTimeout < defaultReadHeaderTimeout {
		return l.ReadIdleTimeout
	}
	return defaultReadHeaderTimeout
}

// guard is what every listener serves before its echo router: unknown
// methods answered here (echo would answer them without its middleware,
// uncounted), Range headers capped, request bodies given a progress
// deadline.
type guard struct {
	listener string
	limits   Limits
	next     http.Handler
}

// knownMethods are the methods of RFC 9110 and PATCH; routes decide which
// of them they allow (405), anything else is not implemented here (501).
var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true,
	http.MethodOptions: true, http.MethodTrace: true,
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !knownMethods[r.Method] {
		metrics.HTTPRequests.WithLabelValues(g.listener, methodLabels[methodIndex(r.Method)], "501").Inc()
		metrics.HTTPLimited.WithLabelValues(g.listener, limitMethod).Inc()
		http.Error(w, "method not implemented", http.StatusNotImplemented)
		return
	}
	if vals := r.Header["Range"]; len(vals) > 0 {
		switch {
		case g.limits.MaxRanges > 0 && rangeCount(vals) > g.limits.MaxRanges:
			// http.ServeContent would answer with one multipart part per
			// range, however many; ignoring the header serves the artifact once.
			delete(r.Header, "Range")
			metrics.HTTPLimited.WithLabelValues(g.listener, limitRanges).Inc()
		case hasEmptySuffixRange(vals[0]):
			// ServeContent answers "bytes=-0" with a 206 of no bytes and the
			// impossible Content-Range "bytes <size>-<size-1>/<size>".
			delete(r.Header, "Range")
			metrics.HTTPLimited.WithLabelValues(g.listener, limitBadRange).Inc()
		}
	}
	if g.limits.ReadIdleTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = &progressBody{ReadCloser: r.Body, ctl: http.NewResponseController(w), g: g, windowStart: time.Now()}
	}
	g.next.ServeHTTP(w, r)
}

// hasEmptySuffixRange reports whether a bytes Range asks for the last 0
// bytes, which no answer can satisfy. It reads each range as
// http.ServeContent does (spaces around either number, a sign), which
// answers such a range with an impossible 206 (found by FuzzRange twice).
func hasEmptySuffixRange(v string) bool {
	specs, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return false
	}
	for _, spec := range strings.Split(specs, ",") {
		start, end, ok := strings.Cut(textproto.TrimString(spec), "-")
		if !ok || textproto.TrimString(start) != "" {
			continue
		}
		if end = textproto.TrimString(end); end == "" || end[0] == '-' {
			continue
		}
		if n, err := strconv.ParseInt(end, 10, 64); err == nil && n == 0 {
			return true
		}
	}
	return false
}

// rangeCount is how many ranges the Range header values ask for.
func rangeCount(vals []string) int {
	n := 0
	for _, v := range vals {
		n += strings.Count(v, ",") + 1
	}
	return n
}

// progressBody gives each read of a request body a deadline at the end of
// the current progress window; a window in which MinProgress bytes
// arrived starts the next one. After the body ended it sets no deadline:
// net/http then reads the connection in the background with none.
type progressBody struct {
	io.ReadCloser
	ctl         *http.ResponseController
	g           *guard
	windowStart time.Time
	moved       int
	ended       bool
}

func (b *progressBody) Read(p []byte) (int, error) {
	if b.ended {
		return b.ReadCloser.Read(p)
	}
	// Not every connection supports deadlines (tests' recorders); then
	// the body is read without one.
	_ = b.ctl.SetReadDeadline(b.windowStart.Add(b.g.limits.ReadIdleTimeout))
	n, err := b.ReadCloser.Read(p)
	b.moved += n
	if b.moved >= MinProgress {
		b.windowStart, b.moved = time.Now(), 0
	}
	if err != nil {
		b.ended = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			metrics.HTTPLimited.WithLabelValues(b.g.listener, limitReadIdle).Inc()
			err = fmt.Errorf("request body: less than %d bytes in %v: %w", MinProgress, b.g.limits.ReadIdleTimeout, err)
		}
	}
	return n, err
}

// limitListener bounds the open connections and wraps each in a
// limitConn.
type limitListener struct {
	net.Listener
	name   string
	limits Limits
	slots  chan struct{} // nil: unbounded
	// rejecting bounds the goroutines answering refused connections.
	rejecting atomic.Int32
}

func newLimitListener(ln net.Listener, name string, limits Limits) *limitListener {
	l := &limitListener{Listener: ln, name: name, limits: limits}
	if limits.MaxConnections > 0 {
		l.slots = make(chan struct{}, limits.MaxConnections)
	}
	return l
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.slots != nil {
			select {
			case l.slots <- struct{}{}:
			default:
				metrics.HTTPLimited.WithLabelValues(l.name, limitConnections).Inc()
				l.reject(c)
				continue
			}
		}
		metrics.HTTPConnections.WithLabelValues(l.name).Inc()
		lc := &limitConn{Conn: c, l: l}
		if sc, ok := c.(syscall.Conn); ok {
			lc.raw, _ = sc.SyscallConn()
		}
		return lc, nil
	}
}

// maxRejecting is how many refused connections are answered at once;
// beyond it they are closed without an answer.
const maxRejecting = 64

var rejectResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Retry-After: 1\r\nConnection: close\r\nContent-Length: 30\r\n\r\ntoo many connections, retry\r\n\r\n")

// reject answers 503 without reading the request, then lingers briefly
// reading what the client sent, so that closing does not reset the
// connection before the client read the answer.
func (l *limitListener) reject(c net.Conn) {
	if l.rejecting.Add(1) > maxRejecting {
		l.rejecting.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer l.rejecting.Add(-1)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(rejectResponse); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

// limitConn renews its write deadline while the client makes progress.
// It owns the connection's write deadline (net/http sets none without
// WriteTimeout). ReadFrom keeps net/http's sendfile path for files,
// sending them in chunks with the deadline renewed between them.
type limitConn struct {
	net.Conn
	// raw asks the kernel about the send queue; nil where it cannot.
	raw    syscall.RawConn
	l      *limitListener
	closed sync.Once
	cut    atomic.Bool
	// readDeadline is the deadline net/http (or a handler) set for reads;
	// Read sets earlier ones of its own while a response is in flight.
	readDeadline atomic.Pointer[time.Time]
	// sent counts the bytes handed to the kernel; writing the writes
	// under way, which Read leaves to their own deadlines.
	sent    atomic.Int64
	writing atomic.Int32
	// emptyAt is the value of sent when the kernel last reported nothing
	// unacknowledged (or nothing was sent yet). Until more is sent the
	// queue stays empty, so a mark needs no system call: per request, the
	// reads and the response's first write ask once instead of three times.
	emptyAt atomic.Int64
}

// sendChunk is how much of a file one sendfile call may send before the
// deadline is renewed.
const sendChunk = 1 << 20

func (c *limitConn) Write(p []byte) (int, error) {
	idle := c.l.limits.WriteIdleTimeout
	if idle <= 0 {
		return c.Conn.Write(p)
	}
	c.writing.Add(1)
	defer c.writing.Add(-1)
	written := 0
	for {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(idle))
		m := c.mark()
		n, err := c.Conn.Write(p[written:])
		written += n
		c.sent.Add(int64(n))
		if err == nil || !c.progressed(m, err) {
			return written, err
		}
	}
}

// progressMark is where a progress window started: the bytes unacknowledged
// in the send queue (-1 if unknown) and the bytes handed to it so far.
type progressMark struct {
	queued int
	sent   int64
}

func (c *limitConn) mark() progressMark {
	m := progressMark{queued: -1, sent: c.sent.Load()}
	if c.emptyAt.Load() == m.sent {
		m.queued = 0
		return m
	}
	if q, ok := unacked(c.raw); ok {
		m.queued = q
		if q == 0 {
			c.emptyAt.Store(m.sent)
		}
	}
	return m
}

// progressed reports whether an operation that failed with err may go on
// in a new window: the client must have taken MinProgress bytes since m,
// acknowledged ones where the kernel says (what was queued at m, plus what
// was handed over since, minus what is queued now), else the bytes handed
// over. One that timed out without that resets the connection, so no
// later write gets a fresh deadline and the handler fails at once.
func (c *limitConn) progressed(m progressMark, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	moved := c.sent.Load() - m.sent
	if q, ok := unacked(c.raw); ok && m.queued >= 0 {
		moved += int64(m.queued - q)
	}
	if moved >= MinProgress {
		return true
	}
	if c.cut.CompareAndSwap(false, true) {
		metrics.HTTPLimited.WithLabelValues(c.l.name, limitWriteIdle).Inc()
	}
	// Reset rather than close: a plain close would leave the unsent
	// response queued in the kernel for as long as the client keeps its
	// window shut.
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
	return false
}

func (c *limitConn) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	idle := c.l.limits.WriteIdleTimeout
	if ok && idle <= 0 {
		return rf.ReadFrom(src)
	}
	lr, isLimited := src.(*io.LimitedReader)
	f, isFile := src.(*os.File)
	if isLimited {
		f, isFile = lr.R.(*os.File)
	}
	if !ok || !isFile {
		// Not a file: no sendfile to keep, every write goes through Write.
		return io.Copy(writerOnly{c}, src)
	}
	c.writing.Add(1)
	defer c.writing.Add(-1)
	var total int64
	for {
		chunk := int64(sendChunk)
		if isLimited {
			if lr.N <= 0 {
				return total, nil
			}
			chunk = min(chunk, lr.N)
		}
		_ = c.Conn.SetWriteDeadline(time.Now().Add(idle))
		m := c.mark()
		// sendfile advances the file's offset by what it sent, so a chunk
		// cut by the deadline resumes where it stopped.
		n, err := rf.ReadFrom(io.LimitReader(f, chunk))
		total += n
		c.sent.Add(n)
		if isLimited {
			lr.N -= n
		}
		if err != nil {
			if c.progressed(m, err) {
				continue
			}
			return total, err
		}
		if n < chunk {
			return total, nil
		}
	}
}

// Read waits for the client's next bytes as net/http asks, but while
// bytes of a response are still unacknowledged it wakes every write idle
// timeout to check that the client takes them: a response small enough
// to fit in the kernel's buffers never blocks a write, and a client that
// reads none of it must be cut all the same, not kept until IdleTimeout.
// While a write is under way its own deadline watches the client.
func (c *limitConn) Read(p []byte) (int, error) {
	idle := c.l.limits.WriteIdleTimeout
	for {
		var outer time.Time
		if d := c.readDeadline.Load(); d != nil {
			outer = *d
		}
		m := c.mark()
		if idle <= 0 || m.queued <= 0 {
			_ = c.Conn.SetReadDeadline(outer)
			return c.Conn.Read(p)
		}
		check := time.Now().Add(idle)
		if !outer.IsZero() && outer.Before(check) {
			check = outer
		}
		_ = c.Conn.SetReadDeadline(check)
		n, err := c.Conn.Read(p)
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || c.readDeadlinePassed() {
			return n, err
		}
		if c.writing.Load() == 0 && !c.progressed(m, err) {
			return 0, err
		}
	}
}

// readDeadlinePassed reports whether the deadline the caller set, now,
// has passed: net/http ends its background read at the end of every
// request by setting one in the past from another goroutine, which must
// end the Read, never count as a client that stopped reading.
func (c *limitConn) readDeadlinePassed() bool {
	d := c.readDeadline.Load()
	return d != nil && !d.IsZero() && !time.Now().Before(*d)
}

func (c *limitConn) SetReadDeadline(t time.Time) error {
	c.readDeadline.Store(&t)
	return c.Conn.SetReadDeadline(t)
}

func (c *limitConn) SetDeadline(t time.Time) error {
	c.readDeadline.Store(&t)
	return c.Conn.SetDeadline(t)
}

// writerOnly hides limitConn's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// CloseWrite keeps net/http's graceful close (it half-closes, then
// lingers) working through the wrapper.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		metrics.HTTPConnections.WithLabelValues(c.l.name).Dec()
		if c.l.slots != nil {
			<-c.l.slots
		}
	})
	return err
}
