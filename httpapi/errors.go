package httpapi

import (
	"context"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/storage"
)

// newEcho returns an echo instance without banner or recover middleware:
// a panic must reach net/http so http.ErrAbortHandler cuts the
// connection instead of becoming a complete 500 response.
func newEcho(onError echo.HTTPErrorHandler) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = onError
	return e
}

// statusOf maps storage errors to HTTP status codes. ErrNotLeader is
// handled by the callers that can forward; reaching here it means the
// write cannot be placed right now.
func statusOf(err error) int {
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		return he.Code
	case errors.Is(err, storage.ErrInvalidPath):
		return http.StatusBadRequest
	case errors.Is(err, storage.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, storage.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, storage.ErrDigestMismatch):
		return http.StatusUnprocessableEntity
	case errors.Is(err, storage.ErrIncomplete):
		return http.StatusBadRequest
	case errors.Is(err, storage.ErrNotLeader):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func messageOf(err error) string {
	var he *echo.HTTPError
	if errors.As(err, &he) {
		if m, ok := he.Message.(string); ok {
			return m
		}
		return http.StatusText(he.Code)
	}
	return err.Error()
}

// plainErrorHandler renders errors as short text; artifact consumers and
// probes read no JSON.
func plainErrorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	writePlain(c, statusOf(err), messageOf(err))
}

func writePlain(c echo.Context, code int, msg string) {
	h := c.Response().Header()
	// Headers set for a body that will not be sent must not describe this one.
	for _, k := range [...]string{"Content-Length", "Content-Type", "Etag", "Last-Modified", "Accept-Ranges", "Content-Range"} {
		delete(h, k)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.String(code, msg+"\n")
}

// jsonErrorHandler renders errors as {"error": "..."} for the internal API.
func jsonErrorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code := statusOf(err)
	if code == http.StatusServiceUnavailable {
		c.Response().Header().Set("Retry-After", "1")
	}
	writeJSONError(c, code, messageOf(err))
}

func writeJSONError(c echo.Context, code int, msg string) {
	_ = c.JSON(code, map[string]string{"error": msg})
}
