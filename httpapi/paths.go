package httpapi

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/sourceraft/sourceraft/storage"
)

// artifactPath turns an escaped request path into a clean storage path
// (no leading slash). It works on the escaped form because an escaped
// separator or dot (%2f, %2e, %5c) would only become dangerous after
// decoding: such escapes are refused outright instead of being decoded
// into something ParsePath might then accept.
func artifactPath(escaped string) (string, storage.Artifact, error) {
	p := escaped
	if strings.IndexByte(p, '%') >= 0 {
		if err := checkEscapes(p); err != nil {
			return "", storage.Artifact{}, err
		}
		var err error
		if p, err = url.PathUnescape(p); err != nil {
			return "", storage.Artifact{}, fmt.Errorf("%w: %v", storage.ErrInvalidPath, err)
		}
	}
	a, err := storage.ParsePath(p)
	if err != nil {
		return "", storage.Artifact{}, err
	}
	// ParsePath accepted it, so it is exactly kind/namespace/name/file and
	// equal to a.Path(); reusing the string saves an allocation per request.
	return strings.TrimPrefix(p, "/"), a, nil
}

func checkEscapes(p string) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return fmt.Errorf("%w: bad escape", storage.ErrInvalidPath)
		}
		b := unhex(p[i+1])<<4 | unhex(p[i+2])
		if b == '/' || b == '.' || b == '\\' || b < 0x20 || b == 0x7f {
			return fmt.Errorf("%w: escaped %q not allowed", storage.ErrInvalidPath, string(rune(b)))
		}
		i += 2
	}
	return nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
