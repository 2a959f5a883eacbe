package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The store's room on its filesystem: a reserve file kept beside the store, given back
// when the disk is full so the store can still checkpoint and start, and a gate that
// refuses writes while the free space is short; and the bound it puts on the WAL.

// ReserveSuffix names the reserve file beside the store file (wspresence.db-reserve).
const ReserveSuffix = "-reserve"

// ErrNoSpace is wrapped by the writes refused while the store's filesystem has too little
// free space (a full disk): the store gave back its reserve and waits for space.
var ErrNoSpace = errors.New("the store's filesystem is full")

// Bounds of the reserve and of the WAL against the filesystem's space.
const (
	// reserveMin and reserveMax bound the default reserve, a 32nd of the filesystem.
	reserveMin = 1 << 20
	reserveMax = 16 << 20
	// walShare: the WAL is bounded by a quarter of the free space (the WAL's own bytes
	// counted as free), so a checkpoint, which grows the database by at most the WAL's
	// pages, finds room; walFloor is the least bound (a checkpoint per commit otherwise).
	walShare = 4
	walFloor = 1 << 20
	// spaceCheckEvery spaces the free-space reads of the writer while writes go through.
	spaceCheckEvery = 100 * time.Millisecond
)

// room is the store's account of its filesystem's space. Its fields other than the atomics
// are the writer's alone (Open's before the writer starts).
type room struct {
	path string // of the reserve file
	log  *slog.Logger
	// size is the reserve's bytes (0: none); minFree the free space below which writes are
	// refused; resumeAt the free space, the reserve not yet retaken, that lets them resume.
	size, minFree, resumeAt int64
	// full is set while writes are refused for want of space.
	full atomic.Bool
	// free is the free space last read (-1: unknown); checked when.
	free    atomic.Int64
	checked time.Time
}

// newRoom reads the filesystem of the store at path and takes the reserve: reserve bytes
// (0: a 32nd of the filesystem, between 1 MiB and 16 MiB; negative: none). A filesystem
// with less free space than the store needs to write starts full: the reserve is given back
// so the store can open and serve reads.
func newRoom(path string, reserve int64, log *slog.Logger) *room {
	r := &room{path: path + ReserveSuffix, log: log}
	free, total, err := diskSpace(path)
	if err != nil {
		// Unknown space (a platform without statfs): no gate, no reserve.
		r.free.Store(-1)
		return r
	}
	switch {
	case reserve < 0:
		reserve = 0
	case reserve == 0:
		reserve = min(max(total/32, reserveMin), reserveMax)
	}
	r.size = reserve
	r.minFree = max(reserve/4, 256<<10)
	r.resumeAt = reserve + 2*r.minFree
	held := r.held()
	r.free.Store(free)
	r.checked = time.Now()
	if free < r.minFree || (held < r.size && free+held < r.resumeAt) {
		r.enterFull("the store's filesystem is full at start")
		return r
	}
	if err := r.take(); err != nil {
		r.enterFull(fmt.Sprintf("the reserve cannot be taken: %v", err))
	}
	return r
}

// held is the size of the reserve file on disk (0 if there is none).
func (r *room) held() int64 {
	st, err := os.Stat(r.path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// take makes the reserve file hold size bytes of the filesystem.
func (r *room) take() error {
	if r.size == 0 {
		return nil
	}
	f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("take the reserve: %w", err)
	}
	err = allocate(f, r.size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(r.path)
		return fmt.Errorf("take the reserve: %w", err)
	}
	return nil
}

// enterFull refuses writes from now on and gives the reserve back to the filesystem, for
// the checkpoints and the start that need it. It logs the change of state once.
func (r *room) enterFull(why string) {
	if r.full.Swap(true) {
		return
	}
	err := os.Remove(r.path)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	r.log.Warn("the store's filesystem is full: writes are refused until space is freed; the reserve is given back",
		"why", why, "reserve", r.path, "reserveBytes", r.size, "removeErr", err)
}

// admit is asked before each commit: nil lets it write; an error wrapping ErrNoSpace and
// ErrCannotWrite refuses it. While writes go through, the free space is read every
// spaceCheckEvery and writes stop below minFree; once refused, they resume when the free
// space lets the reserve be retaken with room to spare.
func (r *room) admit() error {
	if r.size == 0 && r.free.Load() < 0 {
		return nil
	}
	now := time.Now()
	if !r.full.Load() {
		if now.Sub(r.checked) < spaceCheckEvery {
			return nil
		}
		free := r.read(now)
		if free < 0 || free >= r.minFree {
			return nil
		}
		r.enterFull(fmt.Sprintf("%d bytes free, under %d", free, r.minFree))
		return r.refusal()
	}
	free := r.read(now)
	if free < r.resumeAt {
		return r.refusal()
	}
	if err := r.take(); err != nil {
		return r.refusal()
	}
	r.full.Store(false)
	r.log.Info("the store's filesystem has room again: the reserve is retaken and writes resume", "freeBytes", free, "reserveBytes", r.size)
	return nil
}

// watch reads the free space from outside the writer (the checkpointer's tick, Writable):
// a store whose writer is idle still finds its filesystem full, gives its reserve back and
// truncates its WAL, instead of reporting that it writes until its next commit finds out.
// Only the atomics are touched; resuming stays the writer's (admit).
func (r *room) watch() {
	if (r.size == 0 && r.free.Load() < 0) || r.full.Load() {
		return
	}
	free, _, err := diskSpace(r.path)
	if err != nil {
		return
	}
	r.free.Store(free)
	if free < r.minFree {
		r.enterFull(fmt.Sprintf("%d bytes free, under %d", free, r.minFree))
	}
}

// refusal is the error of a write refused for want of space.
func (r *room) refusal() error {
	return fmt.Errorf("%w: %w (free %d bytes; writes resume at %d)", ErrCannotWrite, ErrNoSpace, r.free.Load(), r.resumeAt)
}

// read reads the filesystem's free space now (-1 if it cannot).
func (r *room) read(now time.Time) int64 {
	r.checked = now
	free, _, err := diskSpace(r.path)
	if err != nil {
		free = -1
	}
	r.free.Store(free)
	return free
}

// failed is told of a commit that failed: one that found the disk full, which the
// filesystem's free space confirms, enters the full state.
func (r *room) failed(err error) {
	if r.size == 0 || !isNoSpace(err) {
		return
	}
	if free := r.read(time.Now()); free < 0 || free >= r.resumeAt {
		return // the filesystem has room: not a full disk (a failing device, a fault)
	}
	r.enterFull(err.Error())
}

// walLimit bounds the WAL: limit, or a quarter of the free space (the WAL's own bytes
// counted as free) when that is less, but never under walFloor.
func (r *room) walLimit(limit, wal int64) int64 {
	free := r.free.Load()
	if free < 0 {
		return limit
	}
	return min(limit, max((free+wal)/walShare, walFloor))
}

// isNoSpace reports whether err is a write that found the disk full.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "disk is full") || strings.Contains(msg, "no space left")
}

// Space is the store's account of its filesystem (metrics, /healthz).
type Space struct {
	// Free is the filesystem's free space as last read (-1: unknown).
	Free int64
	// Reserve is the reserve's size, held or given back (Full).
	Reserve int64
	// Full is set while writes are refused for want of space.
	Full bool
	// WALLimit is the WAL's bound as of the last read of the free space.
	WALLimit int64
}

// Space reports the store's filesystem space, its reserve and the WAL's bound.
func (s *Store) Space() Space {
	return Space{Free: s.room.free.Load(), Reserve: s.room.size, Full: s.room.full.Load(),
		WALLimit: s.room.walLimit(s.opts.WALLimit, s.walSize())}
}
