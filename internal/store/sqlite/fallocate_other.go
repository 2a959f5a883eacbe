//go:build !linux

package sqlite

import (
	"errors"
	"os"
)

// errNoFallocate is returned by fallocate where the filesystem cannot preallocate.
var errNoFallocate = errors.New("preallocation not supported")

// fallocate does not preallocate here: allocate writes the bytes instead.
func fallocate(*os.File, int64) error { return errNoFallocate }
