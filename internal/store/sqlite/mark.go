package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// The store's high-water mark: the newest log record, outbox event and queued message
// committed, kept in a file beside the store (MarkSuffix) that the WAL does not hold. The
// writer rewrites it after each commit that moved one of them (a write to the page cache,
// no fsync: a killed process loses nothing of it), so after an unclean stop the mark says
// how far the store had reached, and a start that finds the store behind it (a WAL
// deleted, cut or damaged) refuses to serve a history with its committed tail gone.
//
// The file holds two records, written in turn, each checked by its CRC; the mark is the
// further of the whole ones. Where the platform allows, the file is mapped into memory and a
// record is written by a copy into the mapping (the same page cache, without a system call
// per commit); a copy cut short by a kill leaves the other record, the previous commit's,
// as a write not yet made did before.

// MarkSuffix is appended to the store file's path to name its high-water mark file.
const MarkSuffix = "-mark"

// positions are the newest log record, outbox event and queued message of a store.
type positions struct {
	Log, Published, Messages int64
}

// markSize is the size of one record of the mark file; the file holds markRecords of them
// (a file of one record, an earlier layout, is read as well).
const (
	markSize    = 128
	markRecords = 2
)

// markPrefix begins every record.
const markPrefix = "wspresence-mark 1 log="

// appendRecord writes p's record (markSize bytes) into rec, without allocating.
func (p positions) appendRecord(rec *[markSize]byte) {
	b := append(rec[:0], markPrefix...)
	b = strconv.AppendInt(b, p.Log, 10)
	b = append(b, " published="...)
	b = strconv.AppendInt(b, p.Published, 10)
	b = append(b, " messages="...)
	b = strconv.AppendInt(b, p.Messages, 10)
	sum := crc32.ChecksumIEEE(b)
	b = append(b, " crc="...)
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[sum>>uint(shift)&0xf])
	}
	for len(b) < markSize-1 {
		b = append(b, ' ')
	}
	b = append(b, '\n')
	_ = b[markSize-1] // the record fits: three int64s take at most 60 bytes
}

// errMarkUnreadable is returned by readMark for a mark of which no record is whole (torn by
// a power loss: it was never fsynced).
var errMarkUnreadable = errors.New("the high-water mark is unreadable")

// readMark reads the mark file at path (ok false when there is none): the further of its
// whole records.
func readMark(path string) (p positions, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	if len(b) != markSize && len(b) != markSize*markRecords {
		return p, false, errMarkUnreadable
	}
	for off := 0; off < len(b); off += markSize {
		r, whole := parseRecord(b[off : off+markSize])
		if whole && (!ok || r.Log+r.Published+r.Messages > p.Log+p.Published+p.Messages) {
			p, ok = r, true
		}
	}
	if !ok {
		return p, false, errMarkUnreadable
	}
	return p, true, nil
}

// parseRecord reads one record (whole false when it is not: torn, or not a record).
func parseRecord(rec []byte) (p positions, whole bool) {
	line := strings.TrimSpace(string(rec))
	body, sum, found := strings.Cut(line, " crc=")
	var crc uint32
	if !found {
		return p, false
	}
	if _, err := fmt.Sscanf(sum, "%08x", &crc); err != nil || crc != crc32.ChecksumIEEE([]byte(body)) {
		return p, false
	}
	if _, err := fmt.Sscanf(body, "wspresence-mark 1 log=%d published=%d messages=%d", &p.Log, &p.Published, &p.Messages); err != nil {
		return p, false
	}
	return p, true
}

// storePositions reads the newest positions the store holds (pruned rows included: the
// outbox's floor remembers them, and the queue's newest row is never pruned).
func storePositions(ctx context.Context, db *sql.DB) (positions, error) {
	var p positions
	err := db.QueryRowContext(ctx, `SELECT
		IFNULL((SELECT MAX(seq) FROM log), 0),
		MAX(IFNULL((SELECT MAX(seq) FROM published), 0), IFNULL((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '`+outboxFloorKey+`'), 0)),
		IFNULL((SELECT MAX(seq) FROM messages), 0)`).
		Scan(&p.Log, &p.Published, &p.Messages)
	if err != nil {
		return p, fmt.Errorf("read the store's positions: %w", err)
	}
	return p, nil
}

// ErrTailLost is wrapped by Open when the store is behind its high-water mark: commits
// acknowledged before an unclean stop are gone (the WAL was deleted, cut or damaged, or an
// older copy of the file was put in place by hand).
var ErrTailLost = errors.New("the store's committed tail is lost")

// TailLost says what a store behind its high-water mark lost.
type TailLost struct {
	Path       string
	Mark, Have positions
	// Emptied says the file held nothing of the store any more (not even its identity).
	Emptied bool
}

// Error implements error: what was lost, and the two ways on.
func (e *TailLost) Error() string {
	var lost []string
	if n := e.Mark.Log - e.Have.Log; n > 0 {
		lost = append(lost, fmt.Sprintf("%d connection log records (positions %d-%d)", n, e.Have.Log+1, e.Mark.Log))
	}
	if n := e.Mark.Published - e.Have.Published; n > 0 {
		lost = append(lost, fmt.Sprintf("%d published events (/events ids %d-%d would be issued again to other events)", n, e.Have.Published+1, e.Mark.Published))
	}
	if n := e.Mark.Messages - e.Have.Messages; n > 0 {
		lost = append(lost, fmt.Sprintf("up to %d accepted messages (queue positions %d-%d), which would never be delivered", n, e.Have.Messages+1, e.Mark.Messages))
	}
	return fmt.Sprintf("%v: %s holds less than was committed before the last stop (its write-ahead log %s-wal was deleted, cut or damaged, or an older copy was put in place): lost %s. "+
		"Restore a backup (wspresence restore), or start with --accept-loss to serve what the file holds under a new event epoch",
		ErrTailLost, e.Path, e.Path, strings.Join(lost, ", "))
}

// Unwrap lets errors.Is match ErrTailLost.
func (e *TailLost) Unwrap() error { return ErrTailLost }

// checkMark compares the store with its mark. A store behind it is refused (*TailLost;
// emptied says the store's identity was created by this opening: the whole file was
// lost), unless accept, which logs the loss and starts a new epoch (renew). It returns the
// positions to start the mark from; a file too damaged to tell is not refused here (damage
// says why: Health reports it) and keeps its mark.
func checkMark(ctx context.Context, db *sql.DB, path string, emptied, accept bool, opts *Options) (start positions, renew bool, damage, err error) {
	mark, ok, err := readMark(path + MarkSuffix)
	switch {
	case errors.Is(err, errMarkUnreadable):
		opts.Logger.Warn("the store's high-water mark is unreadable (a power loss tore it): the store's tail cannot be checked this time", "file", path+MarkSuffix)
		ok = false
	case err != nil:
		return start, false, nil, fmt.Errorf("read the store's high-water mark: %w", err)
	}
	have, err := storePositions(ctx, db)
	if err != nil {
		if !isDamage(err) {
			return start, false, nil, err
		}
		opts.Logger.Error("the store's file is damaged: its committed tail cannot be checked", "err", err)
		return mark, false, fmt.Errorf("%w: %w", ErrDamaged, err), nil
	}
	if !ok || (have.Log >= mark.Log && have.Published >= mark.Published && have.Messages >= mark.Messages) {
		return have, false, nil, nil
	}
	lost := &TailLost{Path: path, Mark: mark, Have: have, Emptied: emptied}
	if !accept {
		return have, false, nil, lost
	}
	opts.Logger.Error("serving a store whose committed tail is lost, as asked (--accept-loss): a new event epoch starts", "lost", lost.Error())
	return have, true, nil, nil
}

// markFile rewrites the mark in place (the writer's alone): its records in turn, through
// the mapping when there is one.
type markFile struct {
	f    *os.File
	mem  []byte // the file mapped (markSize*markRecords bytes), nil: written by WriteAt
	next int    // the record the next write replaces
	last positions
}

func openMark(path string, p positions) (*markFile, error) {
	f, err := os.OpenFile(path+MarkSuffix, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the store's high-water mark: %w", err)
	}
	m := &markFile{f: f}
	// Both records are p, synced, before the mapping is made.
	if err := m.write(p, true); err != nil {
		f.Close()
		return nil, err
	}
	m.mem = mapMark(f, markSize*markRecords)
	return m, nil
}

// write records p if it moved past the last one recorded (or always, when force: both
// records are written and synced, the first write).
func (m *markFile) write(p positions, force bool) error {
	if !force && p == m.last {
		return nil
	}
	var rec [markSize]byte
	p.appendRecord(&rec)
	switch {
	case force:
		all := make([]byte, 0, markSize*markRecords)
		for range markRecords {
			all = append(all, rec[:]...)
		}
		if _, err := m.f.WriteAt(all, 0); err != nil {
			return fmt.Errorf("write the store's high-water mark: %w", err)
		}
		if err := m.f.Truncate(int64(len(all))); err != nil {
			return fmt.Errorf("write the store's high-water mark: %w", err)
		}
		if err := m.f.Sync(); err != nil {
			return fmt.Errorf("write the store's high-water mark: %w", err)
		}
	case m.mem != nil && m.copyInto(rec[:]):
	default:
		if _, err := m.f.WriteAt(rec[:], int64(m.next*markSize)); err != nil {
			return fmt.Errorf("write the store's high-water mark: %w", err)
		}
	}
	m.next = (m.next + 1) % markRecords
	m.last = p
	return nil
}

// copyInto copies rec over the next record through the mapping. A mapping that faults (the
// file was cut short behind the store's back) is dropped, and ok false says the record is
// to be written by WriteAt, which extends the file again.
func (m *markFile) copyInto(rec []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			unmapMark(m.mem)
			m.mem, ok = nil, false
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	copy(m.mem[m.next*markSize:], rec)
	return true
}

// close unmaps the file and closes it.
func (m *markFile) close() error {
	if m.mem != nil {
		unmapMark(m.mem)
		m.mem = nil
	}
	return m.f.Close()
}
