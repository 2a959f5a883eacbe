package sqlite

import (
	"errors"
	"os"
	"syscall"
)

// errNoFallocate is returned by fallocate where the filesystem cannot preallocate.
var errNoFallocate = errors.New("preallocation not supported")

// fallocate preallocates size bytes of f.
func fallocate(f *os.File, size int64) error {
	for {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EOPNOTSUPP):
			return errNoFallocate
		}
		return err
	}
}
