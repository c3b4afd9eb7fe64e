package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// Listener is one echo server, the address it binds and the limits that
// keep it available.
type Listener struct {
	Name    string
	Addr    string
	Handler *echo.Echo
	Limits  Limits
}

// Server runs a set of listeners and shuts them all down together.
type Server struct {
	// ShutdownTimeout bounds the graceful drain of in-flight requests;
	// connections still busy after it are closed.
	ShutdownTimeout time.Duration
	// Logger receives start, shutdown and net/http errors; nil is slog.Default().
	Logger *slog.Logger

	listeners []Listener
	bound     []net.Listener
}

// NewServer only records the listeners; Listen binds them.
func NewServer(ls ...Listener) *Server {
	return &Server{ShutdownTimeout: 30 * time.Second, listeners: ls}
}

// Listen binds every address, so that ports chosen by the kernel (":0")
// are known through Addr before Run serves them.
func (s *Server) Listen() error {
	if s.bound != nil {
		return nil
	}
	bound := make([]net.Listener, 0, len(s.listeners))
	for _, l := range s.listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			for _, b := range bound {
				b.Close()
			}
			return fmt.Errorf("listen %s on %s: %w", l.Name, l.Addr, err)
		}
		bound = append(bound, ln)
	}
	s.bound = bound
	return nil
}

// Addr returns the bound address of the named listener, or "" before
// Listen or for an unknown name.
func (s *Server) Addr(name string) string {
	for i, l := range s.listeners {
		if l.Name == name && i < len(s.bound) {
			return s.bound[i].Addr().String()
		}
	}
	return ""
}

// Run serves every listener until ctx ends or one of them fails, then
// shuts all of them down gracefully. It returns nil after a shutdown
// caused by ctx.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.Default()
	}
	errLog := slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	servers := make([]*http.Server, len(s.listeners))
	errc := make(chan error, len(s.listeners))
	for i, l := range s.listeners {
		// No whole-request read or write timeouts: artifact bodies are
		// large in both directions and consumers may be slow. The limits
		// cut only connections that stop making progress.
		srv := &http.Server{
			Handler:           &guard{listener: l.Name, limits: l.Limits, next: l.Handler},
			ReadHeaderTimeout: l.Limits.readHeaderTimeout(),
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          errLog,
		}
		servers[i] = srv
		logger.Info("serving", "listener", l.Name, "addr", s.bound[i].Addr().String())
		go func(name string, ln net.Listener) {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			} else {
				err = fmt.Errorf("serve %s: %w", name, err)
			}
			errc <- err
		}(l.Name, newLimitListener(s.bound[i], l.Name, l.Limits))
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}

	sctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout)
	defer cancel()
	for i, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			logger.Warn("graceful shutdown incomplete, closing", "listener", s.listeners[i].Name, "error", err)
			srv.Close()
		}
	}
	return runErr
}
