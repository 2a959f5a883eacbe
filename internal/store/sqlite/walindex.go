package sqlite

import (
	"encoding/binary"
	"os"
	"runtime/debug"
	"sync/atomic"
	"unsafe"
)

// walIndex reads, from SQLite's wal-index (the -shm file beside the database, mapped for
// reading), where the WAL's last committed frame ends: what the writer needs after each
// commit to bound the WAL (boundWAL) without a system call. The layout read is the
// wal-index header of SQLite's documented WAL format: its first copy at offset 0, the page
// size (a 16-bit field, 1 meaning 65,536) at byte 14, the frame count (mxFrame, 32 bits)
// at byte 16, both in the machine's byte order, and isInit at byte 12. The mapping is the
// writer's alone; the file stays the same for the store's life (its connections stay
// open), and a mapping that faults (the file cut behind the store's back) is dropped, the
// size then read from the WAL file as before.
type walIndex struct {
	mem    []byte
	opened bool
}

// walIndexMapped is how much of the wal-index is mapped: its header and then some.
const walIndexMapped = 4096

// walFileHeader and walFrameHeader are the sizes of the WAL file's header and of each
// frame's, before the page it holds.
const (
	walFileHeader  = 32
	walFrameHeader = 24
)

// end returns the offset at which the WAL's last committed frame ends (0 when the WAL
// holds none), or ok false when the wal-index cannot be read.
func (w *walIndex) end(dbPath string) (end int64, ok bool) {
	if !w.opened {
		w.opened = true
		if f, err := os.Open(dbPath + "-shm"); err == nil {
			if st, err := f.Stat(); err == nil && st.Size() >= walIndexMapped {
				w.mem = mapReadOnly(f, walIndexMapped)
			}
			_ = f.Close()
		}
	}
	if w.mem == nil {
		return 0, false
	}
	defer func() {
		if recover() != nil {
			unmapMark(w.mem)
			w.mem, ok = nil, false
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	if w.mem[12] == 0 { // isInit: the header is not written yet
		return 0, false
	}
	page := int64(binary.NativeEndian.Uint16(w.mem[14:16]))
	if page == 1 {
		page = 1 << 16
	}
	frames := int64(atomic.LoadUint32((*uint32)(unsafe.Pointer(&w.mem[16]))))
	if frames == 0 {
		return 0, true
	}
	return walFileHeader + frames*(walFrameHeader+page), true
}

// close unmaps the wal-index.
func (w *walIndex) close() {
	if w.mem != nil {
		unmapMark(w.mem)
		w.mem = nil
	}
}
