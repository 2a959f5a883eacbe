package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Users' streams: with a recovery window (Options.RecoveryWindow), every message accepted
// for a user takes the next position of that user's stream, an offset contiguous from 1
// within the stream's generation, written in the message's own queue row (stream_offset,
// stream_gen; no second write). A stream's epoch, as clients see it, is the store's epoch
// (meta key epoch, replaced by a restore) and the generation: a restored store, or a
// stream dropped once nothing of it was kept, starts another epoch.

// StreamTop is the position of the newest message of a user's stream.
type StreamTop struct {
	// Gen identifies the stream's generation (StreamEpoch turns it into the epoch).
	Gen int64
	// Offset is the newest message's offset, 0 if none yet.
	Offset int64
}

// streamState is one user's stream: its generation, its top, and when its newest message
// was accepted (or the stream opened).
type streamState struct {
	gen, top int64
	last     int64
}

// userStream is a user's stream in memory: its state and the index of the positions its
// queue rows still hold. kept[i] is the queue position (seq) of the message at offset
// base+i: positive while the row keeps its body for a replay, negative once its position
// is marked gone (a message delivered and not kept: it still counts for the top), 0 once
// the row holds no position any more (pruned, or never written: a gap). The queue rows are
// not indexed by stream position in SQLite: a replay finds its rows here, by their seq.
type userStream struct {
	streamState
	base int64
	kept []int64
}

// at returns the index of offset in kept, ok false when it is outside.
func (u *userStream) at(offset int64) (int, bool) {
	i := offset - u.base
	return int(i), i >= 0 && i < int64(len(u.kept))
}

// hold records that the row seq holds offset (gone: marked gone).
func (u *userStream) hold(offset, seq int64, gone bool) {
	if gone {
		seq = -seq
	}
	if len(u.kept) == 0 {
		u.base, u.kept = offset, append(u.kept[:0], seq)
		return
	}
	if offset < u.base {
		// Rows are read and written in seq order, so offsets only grow: an earlier one is a
		// row of another layout read at a start.
		grown := make([]int64, u.base-offset, u.base-offset+int64(len(u.kept)))
		u.base, u.kept = offset, append(grown, u.kept...)
	}
	for int64(len(u.kept)) <= offset-u.base {
		u.kept = append(u.kept, 0)
	}
	u.kept[offset-u.base] = seq
}

// mark marks the position offset of the row seq gone (the row's outcome forgot it), or
// forgets it (the row holds no position any more), trimming what the index holds
// before its first position.
func (u *userStream) mark(offset, seq int64, forget bool) {
	i, ok := u.at(offset)
	if !ok || (u.kept[i] != seq && u.kept[i] != -seq) {
		return
	}
	if !forget {
		u.kept[i] = -seq
		return
	}
	u.kept[i] = 0
	n := 0
	for n < len(u.kept) && u.kept[n] == 0 {
		n++
	}
	if n == len(u.kept) {
		u.kept = nil
		return
	}
	u.base += int64(n)
	u.kept = u.kept[n:]
}

// forgetSeq forgets the position the row seq holds, found by its seq: positions are taken
// in queue order, so the index's positions grow with its offsets.
func (u *userStream) forgetSeq(seq int64) {
	for i, k := range u.kept {
		switch k = max(k, -k); {
		case k == seq:
			u.mark(u.base+int64(i), seq, true)
			return
		case k > seq:
			return
		}
	}
}

// oldest is the smallest queue position the index holds, 0 if none.
func (u *userStream) oldest() int64 {
	for _, seq := range u.kept {
		if seq != 0 {
			return max(seq, -seq)
		}
	}
	return 0
}

// streamTable holds each user's stream in memory: its top and the index of the positions
// its queue rows hold (userStream). A user's entry is added by an enqueue (the writer, after
// its commit) or by OpenStream (a recovering connection), and removed by PruneStreams once
// the stream kept nothing within the window and its user holds no live connection. The
// positions of the index are added by the enqueue's commit and removed by what clears them
// from the rows: PruneStreams past the recovery window and PruneMessages (a row deleted);
// an outcome that keeps no body marks its position gone. So it holds at most the messages
// of the recovery window and of one prune interval past it. A start rebuilds it from the
// queue rows above the stream floor (streamFloorKey).
type streamTable struct {
	mu sync.Mutex
	m  map[string]*userStream
}

func (t *streamTable) get(userID string) (streamState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u, ok := t.m[userID]; ok {
		return u.streamState, true
	}
	return streamState{}, false
}

// keptPos is a position a commit wrote or changed: the row seq of userID at offset.
type keptPos struct {
	userID      string
	offset, seq int64
}

// streamBatch is what the commit being written did to the streams (the writer's alone):
// the tops it moved, the positions it wrote and those its outcomes marked gone; the writer
// applies it once the commit is durable (applyStreams).
type streamBatch struct {
	tops        map[string]streamState
	added, gone []keptPos
}

func (b *streamBatch) reset() {
	clear(b.tops)
	b.added, b.gone = b.added[:0], b.gone[:0]
}

// took records that m, written by the commit, took the position st of its stream.
func (b *streamBatch) took(st streamState, m *QueuedMessage) {
	b.tops[m.UserID] = st
	b.added = append(b.added, keptPos{userID: m.UserID, offset: m.Offset, seq: m.Seq})
}

// StreamEpoch is the epoch clients see for the stream generation gen.
func (s *Store) StreamEpoch(gen int64) string {
	return s.Epoch() + "-" + strconv.FormatInt(gen, 36)
}

// streamFloorKey is the meta row holding the stream floor: no queue row at or below it
// holds a stream position, so a start reads the rows above it to rebuild the streams
// (PruneStreams raises it).
const streamFloorKey = "stream_floor"

// loadStreams rebuilds the streams from the queue rows above the stream floor that hold
// positions, and raises the floor to just below the oldest of them.
func (s *Store) loadStreams(ctx context.Context) error {
	s.streams.m = map[string]*userStream{}
	floor, err := readFloor(ctx, s.wc, streamFloorKey)
	if err != nil {
		return err
	}
	s.streamsPruned.Store(floor)
	kept := s.opts.RecoveryWindow > 0
	oldest := int64(0)
	err = scanEach(ctx, s.wc, `SELECT seq, user_id, stream_gen, stream_offset, enqueued_at FROM messages
		WHERE seq > ? AND stream_offset IS NOT NULL ORDER BY seq`, func(r *sql.Rows) error {
		var uid string
		var seq, gen, offset, at int64
		if err := r.Scan(&seq, &uid, &gen, &offset, &at); err != nil {
			return fmt.Errorf("load streams: %w", err)
		}
		if oldest == 0 {
			oldest = seq
		}
		u := s.streams.m[uid]
		// A position marked gone (a negative generation) still counts for the top. Rows are
		// read in queue order: a user's newest generation is the one kept.
		if u == nil || u.gen != max(gen, -gen) {
			u = &userStream{streamState: streamState{gen: max(gen, -gen)}}
			s.streams.m[uid] = u
		}
		u.top, u.last = max(u.top, offset), max(u.last, at)
		if kept {
			u.hold(offset, seq, gen < 0)
		}
		return nil
	}, floor)
	if err != nil {
		return err
	}
	if oldest == 0 {
		if err := s.wc.QueryRowContext(ctx, `SELECT IFNULL(MAX(seq), 0) + 1 FROM messages`).Scan(&oldest); err != nil {
			return fmt.Errorf("load streams: %w", err)
		}
	}
	if oldest-1 > floor {
		// Best effort: a start on a full disk reads the same rows again next time.
		if err := writeFloor(ctx, s.wc, streamFloorKey, oldest-1); err != nil {
			s.opts.Logger.Warn("the stream floor is not raised", "err", err)
		} else {
			s.streamsPruned.Store(oldest - 1)
		}
	}
	return nil
}

// readFloor reads the floor recorded under key in the meta table, 0 when none is.
func readFloor(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}, key string) (int64, error) {
	var v string
	switch err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the %s: %w", key, err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the %s %q is not a position", key, v)
	}
	return n, nil
}

// writeFloor records floor under key in the meta table.
func writeFloor(ctx context.Context, q interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}, key string, floor int64) error {
	if _, err := q.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, strconv.FormatInt(floor, 10)); err != nil {
		return fmt.Errorf("write the %s: %w", key, err)
	}
	return nil
}

// position gives m the next position of its user's stream, as of the commit being
// written (batch holds the positions this commit took so far).
func (s *Store) position(batch *streamBatch, m *QueuedMessage) streamState {
	st, ok := batch.tops[m.UserID]
	if !ok {
		st, ok = s.streams.get(m.UserID)
	}
	if !ok {
		st = streamState{gen: m.EnqueuedAt.UnixNano()}
	}
	st.top++
	st.last = max(st.last, m.EnqueuedAt.UnixNano())
	m.Gen, m.Offset = st.gen, st.top
	return st
}

// applyStreams makes the positions a commit took and changed visible; the writer calls it
// once the commit is durable, before OnQueued.
func (s *Store) applyStreams(batch *streamBatch) {
	if len(batch.tops) == 0 && len(batch.gone) == 0 {
		return
	}
	kept := s.opts.RecoveryWindow > 0
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	for uid, st := range batch.tops {
		if u := s.streams.m[uid]; u != nil && u.gen == st.gen {
			u.streamState = st
		} else {
			s.streams.m[uid] = &userStream{streamState: st}
		}
	}
	if kept {
		for _, p := range batch.added {
			s.streams.m[p.userID].hold(p.offset, p.seq, false)
		}
	}
	s.streams.forget(batch.gone, false)
}

// forget marks the positions ps gone, or forgets them (forget set); the caller holds t.mu.
func (t *streamTable) forget(ps []keptPos, forget bool) {
	for _, p := range ps {
		if u := t.m[p.userID]; u != nil {
			u.mark(p.offset, p.seq, forget)
		}
	}
}

// forgetSeqs forgets the positions of the rows ps name by their seq (their offsets
// unknown); the caller holds t.mu.
func (t *streamTable) forgetSeqs(ps []keptPos) {
	for _, p := range ps {
		if u := t.m[p.userID]; u != nil {
			u.forgetSeq(p.seq)
		}
	}
}

// Top returns the top of userID's stream; ok is false when the user has none.
func (s *Store) Top(userID string) (StreamTop, bool) {
	st, ok := s.streams.get(userID)
	return StreamTop{Gen: st.gen, Offset: st.top}, ok
}

// OpenStream returns the top of userID's stream, starting an empty one (its generation
// taken from now) when the user has none: a recovering connection is told the epoch its
// next messages will carry.
func (s *Store) OpenStream(userID string) StreamTop {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	u, ok := s.streams.m[userID]
	if !ok {
		now := s.opts.Now().UnixNano()
		u = &userStream{streamState: streamState{gen: now, last: now}}
		s.streams.m[userID] = u
	}
	return StreamTop{Gen: u.gen, Offset: u.top}
}

// StreamEntry is one kept message of a user's stream.
type StreamEntry struct {
	Seq       int64
	MessageID string
	Body      string
	Offset    int64
	// EnqueuedAt is when the message was accepted.
	EnqueuedAt time.Time
	// Pending is set while the message has no outcome yet (held for a reconnect).
	Pending bool
}

// keptRange returns the offsets and queue positions of userID's kept messages of the
// generation gen with offsets in (after, upTo], oldest first, at most limit of them (no
// limit when limit < 0).
func (s *Store) keptRange(userID string, gen, after, upTo int64, limit int) (offsets, seqs []int64) {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	u := s.streams.m[userID]
	if u == nil || u.gen != gen {
		return nil, nil
	}
	for o := max(after+1, u.base); o <= upTo && limit != 0; o++ {
		i, ok := u.at(o)
		if !ok {
			break
		}
		if u.kept[i] > 0 {
			offsets, seqs = append(offsets, o), append(seqs, u.kept[i])
			limit--
		}
	}
	return offsets, seqs
}

// StreamRange returns, oldest first, up to limit kept messages of userID's stream
// generation gen with offsets in (after, upTo]. A row that does not match its checksum is
// never returned: the read fails with an error wrapping ErrDamaged. A row that no longer
// holds its position (pruned since the index was read) is left out.
func (s *Store) StreamRange(ctx context.Context, userID string, gen, after, upTo int64, limit int) ([]StreamEntry, error) {
	offsets, seqs := s.keptRange(userID, gen, after, upTo, limit)
	if len(seqs) == 0 {
		return nil, nil
	}
	list := make([]byte, 0, 1+len(seqs)*12)
	for i, seq := range seqs {
		if i > 0 {
			list = append(list, ',')
		}
		list = strconv.AppendInt(list, seq, 10)
	}
	byOffset := make(map[int64]StreamEntry, len(seqs))
	err := scanEach(ctx, s.r, `SELECT seq, message_id, user_id, body, stream_offset, stream_gen, enqueued_at, done_at IS NULL, crc FROM messages
		WHERE seq IN (SELECT value FROM json_each(?))`, func(r *sql.Rows) error {
		var e StreamEntry
		var uid string
		var at int64
		var offset, rowGen, crc sql.NullInt64
		if err := r.Scan(&e.Seq, &e.MessageID, &uid, &e.Body, &offset, &rowGen, &at, &e.Pending, &crc); err != nil {
			return err
		}
		if err := s.checkMessage(e.Seq, e.MessageID, uid, at, offset, rowGen, e.Body, crc); err != nil {
			return err
		}
		if uid == userID && rowGen.Valid && rowGen.Int64 == gen && offset.Valid {
			e.Offset, e.EnqueuedAt = offset.Int64, time.Unix(0, at).UTC()
			byOffset[e.Offset] = e
		}
		return nil
	}, "["+string(list)+"]")
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", s.noteRead(err))
	}
	entries := make([]StreamEntry, 0, len(byOffset))
	for _, o := range offsets {
		if e, ok := byOffset[o]; ok {
			entries = append(entries, e)
		}
	}
	return entries, nil
}

// KeptCount returns how many messages of userID's stream generation gen with offsets in
// (after, upTo] are kept: upTo-after when none is gone.
func (s *Store) KeptCount(_ context.Context, userID string, gen, after, upTo int64) (int64, error) {
	_, seqs := s.keptRange(userID, gen, after, upTo, -1)
	return int64(len(seqs)), nil
}

// PruneStreams forgets the positions of messages accepted before cutoff (their bodies
// too, once they have an outcome), and drops the stream of every user that kept nothing
// since cutoff and holds no live connection (the next message starts another generation),
// in chunks of streamPruneChunk rows a transaction. It returns the number of messages
// forgotten. The rows it reads are those from the stream floor up to the first accepted
// since cutoff (found on a reader, off the writer); it raises the floor after.
func (s *Store) PruneStreams(ctx context.Context, cutoff time.Time) (int64, error) {
	from := s.streamsPruned.Load()
	var bound sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT IFNULL((SELECT seq FROM messages WHERE seq > ? AND enqueued_at >= ? ORDER BY seq LIMIT 1),
		(SELECT MAX(seq) + 1 FROM messages))`, from, cutoff.UnixNano()).Scan(&bound); err != nil {
		return 0, fmt.Errorf("prune streams: %w", s.noteRead(err))
	}
	var total int64
	for bound.Valid {
		var cleared []keptPos
		err := s.writeAlone(ctx, func(ctx context.Context) (err error) {
			if err := s.begin(ctx); err != nil {
				return err
			}
			err = scanEach(ctx, s.wc, `UPDATE messages SET stream_offset = NULL, stream_gen = NULL,
				body = CASE WHEN done_at IS NULL THEN body ELSE '' END,
				crc = CASE WHEN crc = `+messageCRCFunc+`(message_id, user_id, enqueued_at, stream_offset, stream_gen, body)
					THEN `+messageCRCFunc+`(message_id, user_id, enqueued_at, NULL, NULL, CASE WHEN done_at IS NULL THEN body ELSE '' END)
					ELSE crc END
				WHERE seq IN (SELECT seq FROM messages WHERE seq > ? AND seq < ? AND stream_offset IS NOT NULL AND enqueued_at < ? ORDER BY seq LIMIT ?)
				RETURNING seq, user_id`, func(r *sql.Rows) error {
				// RETURNING gives the row as updated: the position it held is found by its seq.
				var p keptPos
				if err := r.Scan(&p.seq, &p.userID); err != nil {
					return err
				}
				cleared = append(cleared, p)
				return nil
			}, from, bound.Int64, cutoff.UnixNano(), streamPruneChunk)
			if err = s.end(ctx, err); err != nil {
				return fmt.Errorf("prune streams: %w", err)
			}
			s.streams.mu.Lock()
			s.streams.forgetSeqs(cleared)
			s.streams.mu.Unlock()
			return nil
		})
		if err != nil {
			return total, err
		}
		for _, p := range cleared {
			from = max(from, p.seq)
		}
		if total += int64(len(cleared)); len(cleared) < streamPruneChunk {
			break
		}
	}
	err := s.writeAlone(ctx, func(ctx context.Context) error {
		// Rows below the oldest position the streams hold hold none any more.
		floor := int64(0)
		s.img.mu.RLock()
		s.streams.mu.Lock()
		for uid, u := range s.streams.m {
			if oldest := u.oldest(); oldest > 0 && (floor == 0 || oldest < floor) {
				floor = oldest
			}
			if u.last < cutoff.UnixNano() && len(s.img.live[uid]) == 0 {
				delete(s.streams.m, uid)
			}
		}
		s.streams.mu.Unlock()
		s.img.mu.RUnlock()
		if floor == 0 {
			if err := s.wc.QueryRowContext(ctx, `SELECT IFNULL(MAX(seq), 0) + 1 FROM messages`).Scan(&floor); err != nil {
				return fmt.Errorf("prune streams: %w", err)
			}
		}
		if floor-1 <= s.streamsPruned.Load() {
			return nil
		}
		if err := s.begin(ctx); err != nil {
			return err
		}
		if err := s.end(ctx, writeFloor(ctx, s.wc, streamFloorKey, floor-1)); err != nil {
			return fmt.Errorf("prune streams: %w", err)
		}
		s.streamsPruned.Store(floor - 1)
		return nil
	})
	return total, err
}

// streamPruneChunk is the most positions one transaction of PruneStreams forgets, so the
// commits of the hot path wait for one chunk at most.
const streamPruneChunk = 500

// MarkRecovering records that the connection connectionID of userID opted in to recovery
// (on), or that it closed (off). The table recovering holds the live opted-in connections
// and those closed within the recovery window (a connection closed without a window is
// forgotten at once): a start after a kill, which loses the memory of recent closes, takes
// them with TakeRecovering. Its rows are removed by a later close or a start once past the
// window.
func (s *Store) MarkRecovering(ctx context.Context, connectionID, userID string, on bool) error {
	return s.writeExec(ctx, func(ctx context.Context) error {
		var err error
		switch now := s.opts.Now().UnixNano(); {
		case on:
			_, err = s.wc.ExecContext(ctx, `INSERT OR IGNORE INTO recovering (connection_id, user_id) VALUES (?, ?)`, connectionID, userID)
		case s.opts.RecoveryWindow <= 0:
			_, err = s.wc.ExecContext(ctx, `DELETE FROM recovering WHERE connection_id = ?`, connectionID)
		default:
			if _, err = s.wc.ExecContext(ctx, `UPDATE recovering SET closed_at = ? WHERE connection_id = ?`, now, connectionID); err == nil {
				_, err = s.wc.ExecContext(ctx, `DELETE FROM recovering WHERE closed_at IS NOT NULL AND closed_at < ?`,
					now-s.opts.RecoveryWindow.Nanoseconds())
			}
		}
		if err != nil {
			return fmt.Errorf("record recovering connection %s: %w", connectionID, err)
		}
		return nil
	})
}

// RecoveringUser is a user whose opted-in connection was live when the previous process
// stopped, or closed within the recovery window before that.
type RecoveringUser struct {
	// UserID names the user.
	UserID string
	// ClosedAt is when the user's last opted-in connection closed: the start, for a
	// connection that was live when the previous process stopped.
	ClosedAt time.Time
}

// TakeRecovering returns the users of the opted-in connections recorded live (they died
// with the previous process: closed as of now) or closed within the recovery window, and
// records the live ones closed as of now, so that another start within the window finds
// them again; rows past the window are removed.
func (s *Store) TakeRecovering(ctx context.Context) ([]RecoveringUser, error) {
	var users []RecoveringUser
	err := s.writeExec(ctx, func(ctx context.Context) error {
		users = users[:0]
		now := s.opts.Now().UnixNano()
		cutoff := now - max(s.opts.RecoveryWindow.Nanoseconds(), 0)
		err := scanEach(ctx, s.wc, `SELECT user_id, MAX(IFNULL(closed_at, ?)) FROM recovering
			WHERE closed_at IS NULL OR closed_at >= ? GROUP BY user_id ORDER BY user_id`, func(r *sql.Rows) error {
			var u RecoveringUser
			var at int64
			if err := r.Scan(&u.UserID, &at); err != nil {
				return err
			}
			u.ClosedAt = time.Unix(0, at).UTC()
			users = append(users, u)
			return nil
		}, now, cutoff)
		if err != nil {
			return fmt.Errorf("read recovering connections: %w", err)
		}
		if _, err := s.wc.ExecContext(ctx, `UPDATE recovering SET closed_at = ? WHERE closed_at IS NULL`, now); err != nil {
			return err
		}
		_, err = s.wc.ExecContext(ctx, `DELETE FROM recovering WHERE closed_at IS NOT NULL AND closed_at < ?`, cutoff)
		return err
	})
	return users, err
}
