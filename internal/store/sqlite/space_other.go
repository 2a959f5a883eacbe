//go:build !linux && !darwin

package sqlite

import (
	"errors"
	"os"
)

// diskSpace cannot read a filesystem's space here: the store runs with no reserve and no
// gate on free space.
func diskSpace(string) (free, total int64, err error) {
	return 0, 0, errors.ErrUnsupported
}

// allocate is not used where diskSpace cannot read the space.
func allocate(*os.File, int64) error { return errors.ErrUnsupported }
