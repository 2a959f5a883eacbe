//go:build !linux && !darwin

package sqlite

import "os"

// mapMark maps nothing here: the records are written by WriteAt.
func mapMark(*os.File, int) []byte { return nil }

// unmapMark undoes mapMark.
func unmapMark([]byte) {}

// mapReadOnly maps nothing here: the WAL's size is read from its file (walIndex).
func mapReadOnly(*os.File, int) []byte { return nil }
