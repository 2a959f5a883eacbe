//go:build linux || darwin

package sqlite

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// diskSpace reads the free space (for an unprivileged user) and the size of the
// filesystem that holds path (or its directory, before the file exists).
func diskSpace(path string) (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
			return 0, 0, err
		}
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

// allocate makes f hold size bytes of the filesystem: preallocated where the filesystem
// can, written with zeros elsewhere.
func allocate(f *os.File, size int64) error {
	err := fallocate(f, size)
	if err == nil || !errors.Is(err, errNoFallocate) {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	zeros := make([]byte, 64<<10)
	for left := size; left > 0; {
		n, err := f.Write(zeros[:min(left, int64(len(zeros)))])
		if err != nil {
			return err
		}
		left -= int64(n)
	}
	return nil
}
