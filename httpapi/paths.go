package httpapi

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/sourceraft/sourceraft/storage"
)

// artifactKey turns an escaped request path into the key every later
// step uses. It works on the escaped form because an escaped separator or
// dot (%2f, %2e, %5c) would only become dangerous after decoding: such
// escapes are refused outright instead of being decoded into something
// ParseKey might then accept.
func artifactKey(escaped string) (storage.Key, error) {
	p := escaped
	if strings.IndexByte(p, '%') >= 0 {
		if err := checkEscapes(p); err != nil {
			return storage.Key{}, err
		}
		var err error
		if p, err = url.PathUnescape(p); err != nil {
			return storage.Key{}, fmt.Errorf("%w: %v", storage.ErrInvalidPath, err)
		}
	}
	return storage.ParseKey(p)
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
