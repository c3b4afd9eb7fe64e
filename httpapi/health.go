package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// NewHealthServer serves the probes: /healthz answers while the process
// runs, /readyz reflects Backend.Ready.
func NewHealthServer(cfg Config) *echo.Echo {
	b := cfg.Backend
	e := newEcho(plainErrorHandler)
	e.Use(countRequests("health"))
	e.GET("/healthz", func(c echo.Context) error {
		return c.String(http.StatusOK, "ok")
	})
	e.GET("/readyz", func(c echo.Context) error {
		if err := b.Ready(); err != nil {
			return c.String(http.StatusServiceUnavailable, err.Error())
		}
		return c.String(http.StatusOK, "ok")
	})
	return e
}
