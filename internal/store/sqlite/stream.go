package sqlite

import (
	"context"
	"database/sql"
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

// streamState is one user's stream in memory: its generation, its top, and when its
// newest message was accepted (or the stream opened).
type streamState struct {
	gen, top int64
	last     int64
}

// streamTable holds the top of each user's stream. Entries are added by an enqueue (the
// writer, after its commit) or by OpenStream (a recovering connection), and removed by
// PruneStreams once the stream kept nothing within the window and its user holds no live
// connection; a start rebuilds it from the queue rows that still hold positions.
type streamTable struct {
	mu sync.Mutex
	m  map[string]streamState
}

func (t *streamTable) get(userID string) (streamState, bool) {
	t.mu.Lock()
	st, ok := t.m[userID]
	t.mu.Unlock()
	return st, ok
}

// StreamEpoch is the epoch clients see for the stream generation gen.
func (s *Store) StreamEpoch(gen int64) string {
	return s.Epoch() + "-" + strconv.FormatInt(gen, 36)
}

// loadStreams rebuilds the stream table from the queue rows that hold positions.
func (s *Store) loadStreams(ctx context.Context) error {
	s.streams.m = map[string]streamState{}
	// A position marked gone (a negative generation) still counts for the top.
	return scanEach(ctx, s.wc, `SELECT user_id, ABS(stream_gen), MAX(stream_offset), MAX(enqueued_at) FROM messages
		WHERE stream_offset IS NOT NULL GROUP BY user_id`, func(r *sql.Rows) error {
		var uid string
		var st streamState
		if err := r.Scan(&uid, &st.gen, &st.top, &st.last); err != nil {
			return fmt.Errorf("load streams: %w", err)
		}
		s.streams.m[uid] = st
		return nil
	})
}

// position gives m the next position of its user's stream, as of the commit being
// written (batch holds the positions this commit took so far).
func (s *Store) position(batch map[string]streamState, m *QueuedMessage) streamState {
	st, ok := batch[m.UserID]
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

// applyStreams makes the positions a commit took visible; the writer calls it once the
// commit is durable, before OnQueued.
func (s *Store) applyStreams(batch map[string]streamState) {
	if len(batch) == 0 {
		return
	}
	s.streams.mu.Lock()
	for uid, st := range batch {
		s.streams.m[uid] = st
	}
	s.streams.mu.Unlock()
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
	st, ok := s.streams.m[userID]
	if !ok {
		now := s.opts.Now().UnixNano()
		st = streamState{gen: now, last: now}
		s.streams.m[userID] = st
	}
	return StreamTop{Gen: st.gen, Offset: st.top}
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

// StreamRange returns, oldest first, up to limit kept messages of userID's stream
// generation gen with offsets in (after, upTo]. A row that does not match its checksum is
// never returned: the read fails with an error wrapping ErrDamaged.
func (s *Store) StreamRange(ctx context.Context, userID string, gen, after, upTo int64, limit int) ([]StreamEntry, error) {
	entries, err := queryAll(ctx, s.r, "read stream", func(r *sql.Rows) (e StreamEntry, err error) {
		var at int64
		var crc sql.NullInt64
		if err = r.Scan(&e.Seq, &e.MessageID, &e.Body, &e.Offset, &at, &e.Pending, &crc); err != nil {
			return e, err
		}
		e.EnqueuedAt = time.Unix(0, at).UTC()
		return e, s.checkMessage(e.Seq, e.MessageID, userID, at, sql.NullInt64{Int64: e.Offset, Valid: true}, sql.NullInt64{Int64: gen, Valid: true}, e.Body, crc)
	}, `SELECT seq, message_id, body, stream_offset, enqueued_at, done_at IS NULL, crc FROM messages
		WHERE user_id = ? AND stream_offset > ? AND stream_offset <= ? AND stream_gen = ?
		ORDER BY stream_offset LIMIT ?`, userID, after, upTo, gen, limit)
	return entries, s.noteRead(err)
}

// KeptCount returns how many messages of userID's stream generation gen with offsets in
// (after, upTo] are kept: upTo-after when none is gone.
func (s *Store) KeptCount(ctx context.Context, userID string, gen, after, upTo int64) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM messages WHERE user_id = ? AND stream_offset > ? AND stream_offset <= ? AND stream_gen = ?`,
		userID, after, upTo, gen).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read stream: %w", s.noteRead(err))
	}
	return n, nil
}

// PruneStreams forgets the positions of messages accepted before cutoff (their bodies
// too, once they have an outcome), and drops the stream of every user that kept nothing
// since cutoff and holds no live connection (the next message starts another generation),
// in chunks of streamPruneChunk rows a transaction. It returns the number of messages
// forgotten.
func (s *Store) PruneStreams(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		var n int64
		err := s.writeAlone(ctx, func(ctx context.Context) (err error) {
			if err := s.begin(ctx); err != nil {
				return err
			}
			res, err := s.wc.ExecContext(ctx, `UPDATE messages SET stream_offset = NULL, stream_gen = NULL,
				body = CASE WHEN done_at IS NULL THEN body ELSE '' END,
				crc = CASE WHEN crc = `+messageCRCFunc+`(message_id, user_id, enqueued_at, stream_offset, stream_gen, body)
					THEN `+messageCRCFunc+`(message_id, user_id, enqueued_at, NULL, NULL, CASE WHEN done_at IS NULL THEN body ELSE '' END)
					ELSE crc END
				WHERE seq IN (SELECT seq FROM messages WHERE seq > ? AND stream_offset IS NOT NULL AND enqueued_at < ? ORDER BY seq LIMIT ?)`,
				s.streamsPruned, cutoff.UnixNano(), streamPruneChunk)
			if err == nil {
				n, err = res.RowsAffected()
			}
			if err = s.end(ctx, err); err != nil {
				return fmt.Errorf("prune streams: %w", err)
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		if total += n; n < streamPruneChunk {
			break
		}
	}
	err := s.writeAlone(ctx, func(ctx context.Context) error {
		// Rows below the oldest kept position hold none any more.
		var oldest sql.NullInt64
		if err := s.wc.QueryRowContext(ctx, `SELECT MIN(seq) FROM messages WHERE stream_offset IS NOT NULL`).Scan(&oldest); err != nil {
			return fmt.Errorf("prune streams: %w", err)
		}
		if oldest.Valid {
			s.streamsPruned = oldest.Int64 - 1
		}
		s.img.mu.RLock()
		s.streams.mu.Lock()
		for uid, st := range s.streams.m {
			if st.last < cutoff.UnixNano() && len(s.img.live[uid]) == 0 {
				delete(s.streams.m, uid)
			}
		}
		s.streams.mu.Unlock()
		s.img.mu.RUnlock()
		return nil
	})
	return total, err
}

// streamPruneChunk is the most positions one transaction of PruneStreams forgets, so the
// commits of the hot path wait for one chunk at most.
const streamPruneChunk = 500

// MarkRecovering records that the connection connectionID of userID opted in to recovery
// (on), or forgets it (its close). The table recovering holds the live opted-in
// connections; TakeRecovering empties it at a start, when every connection it names died
// with the previous process.
func (s *Store) MarkRecovering(ctx context.Context, connectionID, userID string, on bool) error {
	return s.writeExec(ctx, func(ctx context.Context) error {
		var err error
		if on {
			_, err = s.wc.ExecContext(ctx, `INSERT OR IGNORE INTO recovering (connection_id, user_id) VALUES (?, ?)`, connectionID, userID)
		} else {
			_, err = s.wc.ExecContext(ctx, `DELETE FROM recovering WHERE connection_id = ?`, connectionID)
		}
		if err != nil {
			return fmt.Errorf("record recovering connection %s: %w", connectionID, err)
		}
		return nil
	})
}

// TakeRecovering returns the users of the opted-in connections recorded live, and forgets
// them (a start: they died with the previous process).
func (s *Store) TakeRecovering(ctx context.Context) ([]string, error) {
	var users []string
	err := s.writeExec(ctx, func(ctx context.Context) error {
		err := scanEach(ctx, s.wc, `SELECT DISTINCT user_id FROM recovering`, func(r *sql.Rows) error {
			var u string
			if err := r.Scan(&u); err != nil {
				return err
			}
			users = append(users, u)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read recovering connections: %w", err)
		}
		_, err = s.wc.ExecContext(ctx, `DELETE FROM recovering`)
		return err
	})
	return users, err
}
