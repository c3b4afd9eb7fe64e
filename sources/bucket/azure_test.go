package bucket

import "testing"

// TestHeaderETag: List Blobs' bare ETags take Get Blob's quoted form, so
// an object's ETag is the same listed and downloaded.
func TestHeaderETag(t *testing.T) {
	for in, want := range map[string]string{
		"0x8DCB171BA9E94B0":   `"0x8DCB171BA9E94B0"`,
		`"0x8DCB171BA9E94B0"`: `"0x8DCB171BA9E94B0"`,
	} {
		if got := headerETag(in); got != want {
			t.Errorf("headerETag(%s) = %s, want %s", in, got, want)
		}
	}
}
