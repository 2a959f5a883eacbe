package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	"github.com/wspresence/wspresence/internal/presence"
)

// Packed users. A user offline for longer than the packing age (PackUsers' cutoff) leaves
// view_users for view_users_packed, where it takes about a third of a row's bytes: blocks
// of many users, each block a row holding its users sorted by id, ids front-coded (the
// length of the prefix shared with the previous id, then the rest), last activities as
// varints past the block's earliest, the offline gap (0, none, or its value), and a
// checksum over the block. A block is at most packBlockBytes, under SQLite's threshold of
// a table cell's overflow (about 4,060 bytes at 4 KiB pages), so one block fills a page.
//
// A packed user is offline (no live connection, announced offline) with a last activity:
// the only users packed. Every read of a user's row reads its hot row first and then its
// packed entry, in one read transaction; a user is never in both: the snapshot that writes
// the hot row of a user read from its packed entry (a return) deletes the entry in the same
// transaction (unpack), and the packing deletes the hot row of each user it packs.
//
// What removes a packed entry: its user's return (unpack), the user retention (PruneUsers).

// packedSchema is the packed users' table and the index that finds a user's block: each
// block's key is its greatest user id.
const packedSchema = `
CREATE TABLE IF NOT EXISTS view_users_packed (
	id      INTEGER PRIMARY KEY,
	last_id TEXT NOT NULL,
	block   BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS view_users_packed_last ON view_users_packed (last_id);
`

// packBlockBytes bounds a block's row (its key, its block and their record header): a
// table's cell spills to an overflow page past about 4,061 bytes of payload at 4 KiB pages.
const packBlockBytes = 4000

// packFormat is the first byte of a block: its encoding's version.
const packFormat = 1

// selectBlock reads the block that would hold a user id: the first whose key is at or past it.
const selectBlock = `SELECT id, last_id, block FROM view_users_packed WHERE last_id >= ? ORDER BY last_id LIMIT 1`

// packed is one packed user: its id, last activity (ns) and offline gap (ns, NULL: none).
type packed struct {
	id   string
	last int64
	gap  sql.NullInt64
}

func (p packed) user() presence.User {
	last := sql.NullInt64{Int64: p.last, Valid: true}
	return presence.User{ID: p.id, LastActivity: fromNanos(last), OfflineSince: fromNanos(offlineSince(last, p.gap)),
		Announced: presence.AnnouncedOffline}
}

// packable reports whether u may be packed: offline, not in its grace, with a last activity.
func packable(u presence.User) bool {
	return u.Live == 0 && u.Announced == presence.AnnouncedOffline && !u.LastActivity.IsZero()
}

func packedOf(u presence.User) packed {
	last := toNanos(u.LastActivity)
	return packed{id: u.ID, last: last.Int64, gap: offlineGap(last, toNanos(u.OfflineSince))}
}

// Entry flags, in the low bits of an entry's first varint (the shared prefix's length
// above them).
const (
	flagGap     = 1 // an offline gap is recorded
	flagGapSize = 2 // and it is not 0: its value follows
	flagBits    = 2
)

// blockCRC is a block's checksum: over its key and its bytes before the checksum.
func blockCRC(key string, body []byte) uint32 {
	h := crc32.Update(0, crc32.IEEETable, []byte(key))
	h = crc32.Update(h, crc32.IEEETable, []byte{0})
	return crc32.Update(h, crc32.IEEETable, body)
}

// entryBytes is what appending p after prev takes in a block but its time.
func entryBytes(prev string, p packed) int {
	shared := sharedPrefix(prev, p.id)
	n := uvarintLen(uint64(shared)<<flagBits) + uvarintLen(uint64(len(p.id)-shared)) + len(p.id) - shared
	if p.gap.Valid && p.gap.Int64 != 0 {
		n += uvarintLen(uint64(p.gap.Int64<<1 ^ p.gap.Int64>>63))
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

func sharedPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// encodeBlocks packs users (sorted by id, distinct) into blocks, each with its key (its
// last id) and bytes, each at most packBlockBytes with its key.
func encodeBlocks(users []packed) (keys []string, blocks [][]byte) {
	for len(users) > 0 {
		// The users that fit: each entry's bytes but its time, and each time taken as long
		// as the block's widest (from its earliest to its latest: an upper bound).
		n, fixed, prev := 0, 0, ""
		lo, hi := users[0].last, users[0].last
		for n < len(users) {
			u := users[n]
			e := entryBytes(prev, u)
			l, h := min(lo, u.last), max(hi, u.last)
			size := 1 + binary.MaxVarintLen64 + binary.MaxVarintLen64 + fixed + e + (n+1)*uvarintLen(uint64(h-l)) + 4 + len(u.id) + 8
			if n > 0 && size > packBlockBytes {
				break
			}
			fixed, prev, lo, hi = fixed+e, u.id, l, h
			n++
		}
		key, block := encodeBlock(users[:n])
		keys, blocks = append(keys, key), append(blocks, block)
		users = users[n:]
	}
	return keys, blocks
}

// encodeBlock writes one block of users (sorted by id) and returns its key.
func encodeBlock(users []packed) (string, []byte) {
	base := users[0].last
	for _, u := range users {
		base = min(base, u.last)
	}
	b := []byte{packFormat}
	b = binary.AppendUvarint(b, uint64(len(users)))
	b = binary.AppendVarint(b, base)
	prev := ""
	for _, u := range users {
		shared := sharedPrefix(prev, u.id)
		flags := 0
		if u.gap.Valid {
			flags |= flagGap
			if u.gap.Int64 != 0 {
				flags |= flagGapSize
			}
		}
		b = binary.AppendUvarint(b, uint64(shared)<<flagBits|uint64(flags))
		b = binary.AppendUvarint(b, uint64(len(u.id)-shared))
		b = append(b, u.id[shared:]...)
		b = binary.AppendUvarint(b, uint64(u.last-base))
		if flags&flagGapSize != 0 {
			b = binary.AppendVarint(b, u.gap.Int64)
		}
		prev = u.id
	}
	key := users[len(users)-1].id
	return key, binary.LittleEndian.AppendUint32(b, blockCRC(key, b))
}

// errBlock is a block that does not decode or does not match its checksum.
var errBlock = errors.New("a block of packed users does not match its checksum")

// walkBlock checks a block whose key is key against its checksum, its key and its order,
// and calls fn with each of its users in id order: the id (its bytes valid during the call
// only), the last activity and the offline gap. It allocates nothing, so that a lookup
// costs a scan of the block's bytes.
func walkBlock(key string, b []byte, fn func(id []byte, last int64, gap sql.NullInt64)) error {
	if len(b) < 5 || binary.LittleEndian.Uint32(b[len(b)-4:]) != blockCRC(key, b[:len(b)-4]) || b[0] != packFormat {
		return fmt.Errorf("%w: the block ending at user %q", errBlock, key)
	}
	body := b[1 : len(b)-4]
	fail := func() error {
		return fmt.Errorf("%w: the block ending at user %q does not decode", errBlock, key)
	}
	bad := false
	uvarint := func() uint64 {
		v, n := binary.Uvarint(body)
		if n <= 0 {
			bad = true
			return 0
		}
		body = body[n:]
		return v
	}
	count := uvarint()
	base, n := binary.Varint(body)
	if bad || n <= 0 || count > uint64(len(b)) {
		return fail()
	}
	body = body[n:]
	var buf [64]byte
	id := buf[:0]
	for i := range count {
		head := uvarint()
		shared, flags := int(head>>flagBits), head&(1<<flagBits-1)
		rest := uvarint()
		if bad || shared > len(id) || rest > uint64(len(body)) {
			return fail()
		}
		suffix := body[:rest]
		body = body[rest:]
		// The ids ascend: this one, the previous one's first shared bytes and the suffix,
		// comes after it when the suffix comes after the rest of the previous one.
		if i > 0 && bytes.Compare(suffix, id[shared:]) <= 0 {
			return fail()
		}
		id = append(id[:shared], suffix...)
		last := base + int64(uvarint())
		var gap sql.NullInt64
		if flags&flagGap != 0 {
			gap.Valid = true
			if flags&flagGapSize != 0 {
				if gap.Int64, n = binary.Varint(body); n <= 0 {
					return fail()
				}
				body = body[n:]
			}
		}
		if bad {
			return fail()
		}
		fn(id, last, gap)
	}
	if len(body) != 0 || string(id) != key {
		return fail()
	}
	return nil
}

// decodeBlock reads a block whose key is key, checked against its checksum and its key.
func decodeBlock(key string, b []byte) ([]packed, error) {
	var out []packed
	err := walkBlock(key, b, func(id []byte, last int64, gap sql.NullInt64) {
		out = append(out, packed{id: string(id), last: last, gap: gap})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// findPacked returns id's entry in the block read (its key and bytes): found false when
// the block does not hold it. The whole block is checked, found or not.
func findPacked(id, key string, block []byte) (packed, bool, error) {
	var p packed
	found := false
	err := walkBlock(key, block, func(uid []byte, last int64, gap sql.NullInt64) {
		if !found && string(uid) == id {
			p, found = packed{id: id, last: last, gap: gap}, true
		}
	})
	if err != nil {
		return packed{}, false, err
	}
	return p, found, nil
}

// packedUser reads id's packed entry from row, the result of selectBlock for id: found
// false when there is none.
func packedUser(row *sql.Row, id string) (presence.User, bool, error) {
	var rowid int64
	var key string
	var block []byte
	switch err := row.Scan(&rowid, &key, &block); {
	case errors.Is(err, sql.ErrNoRows):
		return presence.User{}, false, nil
	case err != nil:
		return presence.User{}, false, err
	}
	p, found, err := findPacked(id, key, block)
	if err != nil {
		return presence.User{}, false, fmt.Errorf("%w: %w", ErrSnapshotDamaged, err)
	}
	if !found {
		return presence.User{}, false, nil
	}
	return p.user(), true, nil
}

// storedBlock is a block read for a rewrite: its row id, key and users.
type storedBlock struct {
	rowid int64
	key   string
	users []packed
}

// readBlocks reads, with the writer's connection, the blocks the query (id, last_id,
// block) returns, stopping once stop says so of a block (after including it).
func (s *Store) readBlocks(ctx context.Context, query string, stop func(key string) bool, args ...any) ([]storedBlock, error) {
	var out []storedBlock
	rows, err := s.wc.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.noteRead(err)
	}
	defer rows.Close()
	for rows.Next() {
		var b storedBlock
		var data []byte
		if err := rows.Scan(&b.rowid, &b.key, &data); err != nil {
			return nil, s.noteRead(err)
		}
		if b.users, err = decodeBlock(b.key, data); err != nil {
			return nil, s.damagedBlock(err)
		}
		out = append(out, b)
		if stop != nil && stop(b.key) {
			break
		}
	}
	return out, s.noteRead(rows.Err())
}

// damagedBlock records a block that fails its checksum (Health) and returns the error.
func (s *Store) damagedBlock(err error) error {
	damaged := fmt.Errorf("%w: %w: restore a backup, or run rebuild while the log is whole", ErrDamaged, err)
	s.opts.Logger.Error("the store's file is damaged", "err", err)
	s.damage.Store(&damaged)
	return damaged
}

// replaceBlocks deletes the blocks old and writes users (sorted, distinct) in their place,
// in the writer's open transaction.
func (s *Store) replaceBlocks(ctx context.Context, old []storedBlock, users []packed) error {
	for _, b := range old {
		if _, err := s.wc.ExecContext(ctx, `DELETE FROM view_users_packed WHERE id = ?`, b.rowid); err != nil {
			return fmt.Errorf("delete a block of packed users: %w", err)
		}
	}
	keys, blocks := encodeBlocks(users)
	for i := range keys {
		if _, err := s.wc.ExecContext(ctx, `INSERT INTO view_users_packed (last_id, block) VALUES (?, ?)`, keys[i], blocks[i]); err != nil {
			return fmt.Errorf("write a block of packed users: %w", err)
		}
	}
	return nil
}

// packScan is how many hot rows a packing step reads per user it may pack.
const packScan = 4

// PackUsers moves the users offline whose last activity is before cutoff (and whom the
// memory image does not hold) from their hot rows to the packed blocks, a chunk per
// transaction on the writer (pruneStep, paced as the prunes are), in user id order, each
// chunk merged with the blocks its ids fall among. It returns how many it packed, in the
// chunks committed (also when it returns an error).
func (s *Store) PackUsers(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	after := ""
	for p := newPace(); ; {
		more := false
		var committed int64
		_, err := s.pruneStep(ctx, p, func(ctx context.Context, limit int) (n int64, err error) {
			if err := s.begin(ctx); err != nil {
				return 0, err
			}
			n, after, more, err = s.packChunk(ctx, after, cutoff, limit)
			if err = s.end(ctx, err); err == nil {
				committed = n
			}
			return n, err
		})
		total += committed
		if err != nil {
			return total, fmt.Errorf("pack users: %w", err)
		}
		if !more {
			return total, nil
		}
	}
}

// packChunk is one step of PackUsers inside the writer's transaction: it reads up to
// packScan*limit hot rows past after, packs those due, and returns how many, the last id
// read, and whether there may be more.
func (s *Store) packChunk(ctx context.Context, after string, cutoff time.Time, limit int) (n int64, last string, more bool, err error) {
	due, last, more, err := s.dueUsers(ctx, after, cutoff, limit)
	if err != nil {
		return 0, after, false, err
	}
	if len(due) == 0 {
		return 0, last, more, nil
	}
	first, final := due[0].id, due[len(due)-1].id
	// The blocks the chunk's ids fall among: from the one before the first id (when it has
	// room left, as the previous chunk's last block has) to the one that would hold the last.
	blocks, err := s.readBlocks(ctx, `SELECT id, last_id, block FROM view_users_packed WHERE last_id < ? ORDER BY last_id DESC LIMIT 1`, nil, first)
	if err != nil {
		return 0, last, false, err
	}
	if len(blocks) == 1 && blockBytes(blocks[0].users) > packBlockBytes-64 {
		blocks = nil // full: the chunk starts a block of its own
	}
	more2, err := s.readBlocks(ctx, `SELECT id, last_id, block FROM view_users_packed WHERE last_id >= ? ORDER BY last_id`,
		func(key string) bool { return key >= final }, first)
	if err != nil {
		return 0, last, false, err
	}
	blocks = append(blocks, more2...)
	merged := map[string]packed{}
	for _, b := range blocks {
		for _, u := range b.users {
			merged[u.id] = u
		}
	}
	for _, u := range due {
		merged[u.id] = u // the hot row is the user's latest
	}
	users := make([]packed, 0, len(merged))
	for _, u := range merged {
		users = append(users, u)
	}
	slices.SortFunc(users, func(a, b packed) int { return cmpID(a.id, b.id) })
	if err := s.replaceBlocks(ctx, blocks, users); err != nil {
		return 0, last, false, err
	}
	del, err := s.wc.PrepareContext(ctx, `DELETE FROM view_users WHERE user_id = ?`)
	if err != nil {
		return 0, last, false, fmt.Errorf("delete the hot rows of packed users: %w", err)
	}
	defer del.Close()
	for _, u := range due {
		if _, err := del.ExecContext(ctx, u.id); err != nil {
			return 0, last, false, fmt.Errorf("delete the hot row of user %q: %w", u.id, err)
		}
	}
	return int64(len(due)), last, more, nil
}

// dueUsers reads, in the writer's open transaction, the hot rows past after in id order,
// up to packScan*limit of them, and stops as soon as limit of them are due for packing:
// it returns those, the last id read and whether there may be more.
func (s *Store) dueUsers(ctx context.Context, after string, cutoff time.Time, limit int) (due []packed, last string, more bool, err error) {
	rows, err := s.wc.QueryContext(ctx, selectUser+` WHERE user_id > ? ORDER BY user_id LIMIT ?`, after, packScan*limit)
	if err != nil {
		return nil, after, false, s.noteRead(fmt.Errorf("read the users to pack: %w", err))
	}
	defer rows.Close()
	last, read := after, 0
	for len(due) < limit && rows.Next() {
		u, err := scanUser(rows)
		if errors.Is(err, ErrSnapshotDamaged) {
			return nil, after, false, s.damagedBlock(err)
		} else if err != nil {
			return nil, after, false, s.noteRead(fmt.Errorf("read the users to pack: %w", err))
		}
		last, read = u.ID, read+1
		if _, held := s.img.users[u.ID]; !held && packable(u) && u.LastActivity.Before(cutoff) {
			due = append(due, packedOf(u))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, after, false, s.noteRead(fmt.Errorf("read the users to pack: %w", err))
	}
	return due, last, len(due) == limit || read == packScan*limit, nil
}

func cmpID(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// blockBytes is about what a block of users takes encoded.
func blockBytes(users []packed) int {
	if len(users) == 0 {
		return 0
	}
	_, b := encodeBlock(users)
	return len(b) + len(users[len(users)-1].id)
}

// unpack deletes, in the writer's open transaction (a snapshot's), the packed entries of
// ids, whose hot rows the snapshot writes.
func (s *Store) unpack(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	for len(ids) > 0 {
		blocks, err := s.readBlocks(ctx, selectBlock, nil, ids[0])
		if err != nil {
			return err
		}
		if len(blocks) == 0 {
			return nil
		}
		b := blocks[0]
		gone := map[string]bool{}
		for len(ids) > 0 && ids[0] <= b.key {
			gone[ids[0]] = true
			ids = ids[1:]
		}
		if !anyIn(b.users, gone) {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(b.users), func(p packed) bool { return gone[p.id] })
		if err := s.replaceBlocks(ctx, []storedBlock{b}, kept); err != nil {
			return err
		}
	}
	return nil
}

func anyIn(users []packed, ids map[string]bool) bool {
	for _, u := range users {
		if ids[u.id] {
			return true
		}
	}
	return false
}

// prunePacked deletes the packed users whose last activity is before cutoff, a chunk of
// blocks per transaction (pruneStep), and returns how many.
func (s *Store) prunePacked(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	after, bound := "", cutoff.UnixNano()
	for p := newPace(); ; {
		more := false
		n, err := s.pruneStep(ctx, p, func(ctx context.Context, limit int) (n int64, err error) {
			if err := s.begin(ctx); err != nil {
				return 0, err
			}
			// A chunk of blocks: about a hundred users each.
			blocks, err := s.readBlocks(ctx, `SELECT id, last_id, block FROM view_users_packed WHERE last_id > ? ORDER BY last_id LIMIT ?`,
				nil, after, max(limit/100, 1))
			more = err == nil && len(blocks) == max(limit/100, 1)
			for _, b := range blocks {
				if err != nil {
					break
				}
				after = b.key
				kept := make([]packed, 0, len(b.users))
				for _, u := range b.users {
					if u.last >= bound {
						kept = append(kept, u)
					}
				}
				if len(kept) < len(b.users) {
					n += int64(len(b.users) - len(kept))
					err = s.replaceBlocks(ctx, []storedBlock{b}, kept)
				}
			}
			return n, s.end(ctx, err)
		})
		total += n
		if err != nil {
			return total, fmt.Errorf("prune packed users: %w", err)
		}
		if !more {
			return total, nil
		}
	}
}

// PackedUsers counts the users the view holds packed and those it holds in hot rows (a
// full read of both tables, for tests and diagnostics), each packed block checked.
func (s *Store) PackedUsers(ctx context.Context) (packedUsers, hot int64, err error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = tx.Rollback() }()
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM view_users`).Scan(&hot); err != nil {
		return 0, 0, s.noteRead(err)
	}
	err = eachPacked(ctx, tx, func(packed) { packedUsers++ })
	if errors.Is(err, errBlock) {
		return packedUsers, hot, s.damagedBlock(err)
	}
	return packedUsers, hot, s.noteRead(err)
}

// eachPacked calls fn for each packed user, in id order, each block checked (errBlock).
func eachPacked(ctx context.Context, q queryer, fn func(packed)) error {
	return scanEach(ctx, q, `SELECT last_id, block FROM view_users_packed ORDER BY last_id`, func(r *sql.Rows) error {
		var key string
		var block []byte
		if err := r.Scan(&key, &block); err != nil {
			return err
		}
		users, err := decodeBlock(key, block)
		if err != nil {
			return err
		}
		for _, u := range users {
			fn(u)
		}
		return nil
	})
}
