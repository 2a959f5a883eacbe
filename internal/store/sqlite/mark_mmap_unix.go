//go:build linux || darwin

package sqlite

import (
	"os"
	"syscall"
)

// mapMark maps the first size bytes of f, shared, for reading and writing (nil when the
// platform refuses: the records are then written by WriteAt).
func mapMark(f *os.File, size int) []byte {
	mem, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil
	}
	return mem
}

// unmapMark undoes mapMark.
func unmapMark(mem []byte) { _ = syscall.Munmap(mem) }

// mapReadOnly maps the first size bytes of f, shared, for reading (nil when the platform
// refuses).
func mapReadOnly(f *os.File, size int) []byte {
	mem, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil
	}
	return mem
}
