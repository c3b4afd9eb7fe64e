package archive

import (
	"fmt"
	"strings"

	"github.com/fluxcd/pkg/sourceignore"
	"github.com/fluxcd/pkg/sourceignore/gitignore"
)

// IgnoreFilter returns the Filter of Flux's ignore rules for dir: the
// built-in exclusions (VCS metadata, CI configuration, images and
// archives), then every .sourceignore file in the tree (each scoped to its
// directory), then extra, the object's spec.ignore, which takes precedence
// over both.
func IgnoreFilter(dir string, extra *string) (Filter, error) {
	ps, err := sourceignore.LoadIgnorePatterns(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("load %s patterns: %w", sourceignore.IgnoreFile, err)
	}
	if extra != nil {
		ps = append(ps, sourceignore.ReadPatterns(strings.NewReader(*extra), nil)...)
	}
	return MatcherFilter(sourceignore.NewDefaultMatcher(ps, nil)), nil
}

// MatcherFilter adapts a gitignore matcher to a Filter.
func MatcherFilter(m gitignore.Matcher) Filter {
	return func(path string, isDir bool) bool {
		return m.Match(splitPath(path), isDir)
	}
}
