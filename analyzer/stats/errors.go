package stats

import "fmt"

// errorf wraps a sentinel with detail so that errors.Is(err, sentinel) holds.
func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
