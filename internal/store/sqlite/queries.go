package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// The view's reads answer from the memory image (a state is there only once durable), and
// for a user it does not hold (offline past the grace period), from the snapshot tables.

// OnlineUsers lists users with a live connection in user id order, starting after the id
// after ("" for the first page), at most limit of them.
func (s *Store) OnlineUsers(_ context.Context, after string, limit int) ([]presence.Status, error) {
	im := s.img
	im.mu.RLock()
	defer im.mu.RUnlock()
	out := []presence.Status{}
	im.online.AscendGreaterOrEqual(after, func(id string) bool {
		if id == after {
			return true
		}
		if len(out) >= limit {
			return false
		}
		out = append(out, status(im.users[id]))
		return true
	})
	return out, nil
}

func status(u *presence.User) presence.Status {
	return presence.Status{UserID: u.ID, Connections: u.Live, LastActivity: u.LastActivity}
}

// Users returns the status of each id, in the order given; a user the view has never seen
// is offline with no last activity. Users the image does not hold are read from the
// snapshot tables.
func (s *Store) Users(ctx context.Context, ids []string) ([]presence.Status, error) {
	out := make([]presence.Status, len(ids))
	var misses []int
	im := s.img
	im.mu.RLock()
	for i, id := range ids {
		if u, ok := im.users[id]; ok {
			out[i] = status(u)
		} else {
			out[i].UserID = id
			misses = append(misses, i)
		}
	}
	im.mu.RUnlock()
	if len(misses) == 0 {
		return out, nil
	}
	// A user's hot row and its packed entry are read in one transaction: a user returning
	// meanwhile has one or the other.
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, s.noteRead(err)
	}
	defer func() { _ = tx.Rollback() }()
	// Each query is parsed once for all the ids (SQLite's parser costs more than a lookup).
	var byID, block *sql.Stmt
	defer func() {
		for _, st := range []*sql.Stmt{byID, block} {
			if st != nil {
				_ = st.Close()
			}
		}
	}()
	for _, i := range misses {
		if byID == nil {
			if byID, err = tx.PrepareContext(ctx, selectUser+` WHERE user_id = ?`); err != nil {
				return nil, s.noteRead(fmt.Errorf("read the view: %w", err))
			}
		}
		u, err := scanUser(byID.QueryRowContext(ctx, ids[i]))
		if errors.Is(err, sql.ErrNoRows) {
			if block == nil {
				if block, err = tx.PrepareContext(ctx, selectBlock); err != nil {
					return nil, s.noteRead(fmt.Errorf("read the packed users: %w", err))
				}
			}
			var found bool
			if u, found, err = packedUser(block.QueryRowContext(ctx, ids[i]), ids[i]); err == nil && !found {
				err = sql.ErrNoRows
			}
		}
		u, found, err := storedRow(s, u, err)
		if err != nil {
			return nil, err
		} else if found {
			out[i] = status(&u)
		}
	}
	return out, nil
}

// ImageUsers is the number of users the memory image holds (online, in their grace period,
// or changed since the last snapshot).
func (s *Store) ImageUsers() int {
	s.img.mu.RLock()
	defer s.img.mu.RUnlock()
	return len(s.img.users)
}

// LiveConnections lists the ids of userID's live connections, in id order.
func (s *Store) LiveConnections(_ context.Context, userID string) ([]string, error) {
	s.img.mu.RLock()
	defer s.img.mu.RUnlock()
	return append([]string{}, s.img.live[userID]...), nil
}

// LiveConnectionsOf lists the live connections of each of users (every user asked for
// has an entry, empty when offline), each in id order. It reads the memory image: it
// cannot fail.
func (s *Store) LiveConnectionsOf(users []string) map[string][]string {
	out := make(map[string][]string, len(users))
	s.img.mu.RLock()
	defer s.img.mu.RUnlock()
	for _, u := range users {
		if _, ok := out[u]; !ok {
			out[u] = append([]string{}, s.img.live[u]...)
		}
	}
	return out
}

// AllLiveConnections lists every live connection of the view, by user then id (after a
// restart of the local runtime these are the connections that died with the process).
func (s *Store) AllLiveConnections(_ context.Context) ([]presence.Conn, error) {
	s.img.mu.RLock()
	out := []presence.Conn{}
	for uid, ids := range s.img.live {
		for _, id := range ids {
			out = append(out, presence.Conn{ID: id, UserID: uid})
		}
	}
	s.img.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].UserID != out[j].UserID {
			return out[i].UserID < out[j].UserID
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// OnlineCount counts the users with a live connection.
func (s *Store) OnlineCount(_ context.Context) (int, error) {
	s.img.mu.RLock()
	defer s.img.mu.RUnlock()
	return s.img.online.Len(), nil
}

// PendingGraces lists the grace timers to run: users with no live connection still
// announced online (after a restart, these timers are restored from here), by user id.
func (s *Store) PendingGraces(_ context.Context) ([]presence.Grace, error) {
	s.img.mu.RLock()
	out := []presence.Grace{}
	for _, u := range s.img.users {
		if u.GracePending() {
			out = append(out, presence.Grace{UserID: u.ID, Since: u.OfflineSince})
		}
	}
	s.img.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].UserID < out[j].UserID })
	return out, nil
}

// View is the whole view: every user row and every connection row (tombstones included).
type View struct {
	Users       []presence.User
	Connections []presence.Conn
}

// Live lists the live connections of the view.
func (v View) Live() []presence.Conn {
	var out []presence.Conn
	for _, c := range v.Connections {
		if c.Live() {
			out = append(out, c)
		}
	}
	return out
}

// Dump copies the whole view, the image's rows and the snapshot's others (packed users
// included), ordered by id.
// It reads on the writer, between commits.
func (s *Store) Dump(ctx context.Context) (View, error) {
	var v View
	err := s.writeAlone(ctx, func(ctx context.Context) error {
		im := s.img
		for _, u := range im.users {
			v.Users = append(v.Users, *u)
		}
		for _, c := range im.conns {
			v.Connections = append(v.Connections, *c)
		}
		hot := map[string]bool{}
		if err := scanEach(ctx, s.wc, selectUser, func(r *sql.Rows) error {
			u, err := scanUser(r)
			hot[u.ID] = true
			if _, held := im.users[u.ID]; err == nil && !held {
				v.Users = append(v.Users, u)
			}
			return err
		}); err != nil {
			return fmt.Errorf("dump users: %w", err)
		}
		if err := eachPacked(ctx, s.wc, func(p packed) {
			if _, held := im.users[p.id]; !held && !hot[p.id] {
				v.Users = append(v.Users, p.user())
			}
		}); err != nil {
			return fmt.Errorf("dump packed users: %w", err)
		}
		return scanEach(ctx, s.wc, selectConn, func(r *sql.Rows) error {
			c, err := scanConn(r)
			if _, held := im.conns[c.ID]; err == nil && !held {
				v.Connections = append(v.Connections, c)
			}
			return err
		})
	})
	if err != nil {
		return View{}, err
	}
	sort.Slice(v.Users, func(i, j int) bool { return v.Users[i].ID < v.Users[j].ID })
	sort.Slice(v.Connections, func(i, j int) bool { return v.Connections[i].ID < v.Connections[j].ID })
	return v, nil
}

// PendingMessages returns up to limit queued messages not done yet whose sequence number is
// above after, oldest first (at a start, the messages a previous run left). A row that does
// not match its checksum is never returned: the read fails with an error wrapping
// ErrDamaged (and Health reports it).
func (s *Store) PendingMessages(ctx context.Context, after int64, limit int) ([]QueuedMessage, error) {
	after = max(after, s.queueFloor.Load())
	msgs, err := queryAll(ctx, s.r, "read queue", func(r *sql.Rows) (m QueuedMessage, err error) {
		var at int64
		var offset, gen, crc sql.NullInt64
		if err = r.Scan(&m.Seq, &m.MessageID, &m.UserID, &m.Body, &at, &offset, &gen, &crc); err != nil {
			return m, err
		}
		m.EnqueuedAt = time.Unix(0, at).UTC()
		m.Offset, m.Gen = offset.Int64, gen.Int64
		return m, s.checkMessage(m.Seq, m.MessageID, m.UserID, at, offset, gen, m.Body, crc)
	}, `SELECT seq, message_id, user_id, body, enqueued_at, stream_offset, stream_gen, crc FROM messages WHERE done_at IS NULL AND seq > ? ORDER BY seq LIMIT ?`, after, limit)
	return msgs, s.noteRead(err)
}

// ErrMismatch is returned by Complete when seqs and outcomes differ in length.
var ErrMismatch = errors.New("one outcome per message")

// Complete marks the queued messages msgs done and writes their outcomes (outcomes[i] is
// msgs[i]'s) to the outbox, in the writer's group commit, shared with the appends and
// enqueues waiting with it. It returns once that commit is done, with the number of
// outcomes published: a message already done is not completed (or published) twice. A
// commit of outcomes alone is not synced to disk by itself (setSync): it survives a crash
// of the process at once and a power loss from the next synced commit on; one lost with
// the machine leaves its messages pending, delivered again by the next start. A done
// message is remembered (see PruneMessages), so enqueueing the same MessageId for the same
// user again is ignored.
//
// A message is named by its Seq; its other fields, as Enqueue's OnQueued or
// PendingMessages handed them over, let the store rewrite the row's checksum without
// reading the row (a message given with its Seq alone costs the store a checksum of the
// row as stored).
func (s *Store) Complete(ctx context.Context, msgs []QueuedMessage, outcomes []events.Published) (published int, err error) {
	return s.CompleteKeeping(ctx, msgs, outcomes, nil)
}

// CompleteKeeping is Complete, where keep[i] set keeps msgs[i]'s body and stream position
// for the recovery window (its user recovers; PruneStreams forgets them after it). A
// message not kept has its body forgotten at once and its position marked gone (a replay
// from before it is too_old). A nil keep keeps none.
func (s *Store) CompleteKeeping(ctx context.Context, msgs []QueuedMessage, outcomes []events.Published, keep []bool) (published int, err error) {
	if len(msgs) != len(outcomes) || (keep != nil && len(keep) != len(msgs)) {
		return 0, fmt.Errorf("complete %d messages with %d outcomes: %w", len(msgs), len(outcomes), ErrMismatch)
	}
	req := &writeReq{completes: msgs, outcomes: outcomes, keeps: keep, done: make(chan error, 1)}
	if err := s.submit(ctx, req); err != nil {
		return 0, err
	}
	return req.published, nil
}

// complete marks msgs done and writes the outcomes of those that were pending to the
// outbox, inside the writer's transaction. It returns how many it published.
func (s *Store) complete(ctx context.Context, msgs []QueuedMessage, outcomes []events.Published, keep []bool) (int, error) {
	now := s.opts.Now().UnixNano()
	rows := make([]outboxRow, 0, len(outcomes))
	at := time.Unix(0, now)
	for i := range msgs {
		var n int64
		var err error
		if keep != nil && keep[i] {
			n, err = execAffected(ctx, s.stmts.doneKeep, now, msgs[i].Seq)
		} else {
			n, err = s.forget(ctx, &msgs[i], now)
		}
		if err != nil {
			return 0, fmt.Errorf("dequeue %d: %w", msgs[i].Seq, err)
		}
		if n == 1 {
			rows = append(rows, outboxRow{p: outcomes[i], at: at})
		}
	}
	return s.publish(ctx, rows)
}

// forget marks m done, forgetting its body and marking its stream position gone, and
// returns the rows it changed (0 for a message already done). The row's new checksum is
// computed here from m when the row's checksum is m's (the row is the one m was read or
// written as: its body is forgotten, any other column changed on disk still fails the new
// checksum); any other row (its positions pruned since, of a layout without checksums,
// damaged, or m given by its Seq alone) is rewritten by the statement that checks the row
// as stored in SQL (msgcrc.go).
func (s *Store) forget(ctx context.Context, m *QueuedMessage, now int64) (int64, error) {
	offset, gen := m.positions(s.opts.RecoveryWindow > 0)
	if m.MessageID != "" {
		at := m.EnqueuedAt.UnixNano()
		was := messageCRC(m.MessageID, m.UserID, at, offset, gen, m.Body)
		gen.Int64 = -gen.Int64
		n, err := execAffected(ctx, s.stmts.doneKnown, now, messageCRC(m.MessageID, m.UserID, at, offset, gen, ""), m.Seq, was)
		if n == 1 && offset.Valid {
			s.batchStreams.gone = append(s.batchStreams.gone, keptPos{userID: m.UserID, offset: offset.Int64, seq: m.Seq})
		}
		if n != 0 || err != nil {
			return n, err
		}
	}
	var uid string
	var at sql.NullInt64
	switch err := s.stmts.done.QueryRowContext(ctx, now, m.Seq).Scan(&uid, &at); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, err
	}
	if at.Valid {
		s.batchStreams.gone = append(s.batchStreams.gone, keptPos{userID: uid, offset: at.Int64, seq: m.Seq})
	}
	return 1, nil
}

// execAffected runs st with args and returns the rows it changed.
func execAffected(ctx context.Context, st *sql.Stmt, args ...any) (int64, error) {
	res, err := st.ExecContext(ctx, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// PruneMessages forgets delivered messages done more than retention ago: after that, their
// MessageId may be enqueued again. It deletes a chunk per transaction (pruneStep), of the
// messages before the first one accepted since the cutoff (rows are in acceptance order,
// so no index of the done rows is needed; the newest row is kept, so a position is never
// handed out twice), then moves the queue floor up to the oldest pending message.
func (s *Store) PruneMessages(ctx context.Context, retention time.Duration) (int64, error) {
	cutoff := s.opts.Now().Add(-retention).UnixNano()
	var bound sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT IFNULL((SELECT seq FROM messages WHERE enqueued_at >= ? ORDER BY seq LIMIT 1),
		(SELECT MAX(seq) FROM messages))`, cutoff).Scan(&bound); err != nil {
		return 0, fmt.Errorf("prune messages: %w", err)
	}
	var n int64
	for p := newPace(); bound.Valid; {
		limit := p.chunk
		k, err := s.pruneStep(ctx, p, func(ctx context.Context, limit int) (int64, error) {
			return s.deleteMessages(ctx, bound.Int64, cutoff, limit)
		})
		if n += k; err != nil {
			return n, fmt.Errorf("prune messages: %w", err)
		}
		if k < int64(limit) {
			break
		}
	}
	return n, s.raiseQueueFloor(ctx)
}

// deleteMessages deletes up to limit done messages before the queue position bound done
// before cutoff, in a transaction of its own, and forgets the stream positions they held.
func (s *Store) deleteMessages(ctx context.Context, bound, cutoff int64, limit int) (int64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	var n int64
	var held []keptPos
	err := scanEach(ctx, s.wc, `DELETE FROM messages WHERE seq IN
		(SELECT seq FROM messages WHERE seq < ? AND done_at < ? ORDER BY seq LIMIT ?)
		RETURNING seq, user_id, stream_offset`, func(r *sql.Rows) error {
		var p keptPos
		var offset sql.NullInt64
		if err := r.Scan(&p.seq, &p.userID, &offset); err != nil {
			return err
		}
		if n++; offset.Valid {
			p.offset = offset.Int64
			held = append(held, p)
		}
		return nil
	}, bound, cutoff, limit)
	if err := s.end(ctx, err); err != nil {
		return 0, err
	}
	s.streams.mu.Lock()
	s.streams.forget(held, true)
	s.streams.mu.Unlock()
	return n, nil
}

// pruneChunks runs del (a DELETE of at most a chunk of rows, its last argument the chunk)
// with args, a pruneStep each at the pace of its backlog, until it deletes fewer, and
// returns how many it deleted.
func (s *Store) pruneChunks(ctx context.Context, what, del string, args ...any) (int64, error) {
	var total int64
	for p := newPace(); ; {
		n, limit, err := s.deleteStep(ctx, p, del, args...)
		total += n
		if err != nil {
			return total, fmt.Errorf("%s: %w", what, err)
		}
		if n < int64(limit) {
			return total, nil
		}
	}
}

// queueFloorKey is the meta row holding the queue floor: no message at or below it is
// pending, so a start reads the pending messages from there on instead of reading every
// row the retention keeps.
const queueFloorKey = "queue_floor"

// raiseQueueFloor moves the queue floor up to just below the oldest pending message (to
// the newest message when none is pending). It finds it on a reader, off the writer, reading
// the queue from the floor on (the rows accepted since the last prune): a message pending
// then can only be done since, and one accepted since comes after every row it read.
func (s *Store) raiseQueueFloor(ctx context.Context) error {
	floor := s.queueFloor.Load()
	var first, newest sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT (SELECT seq FROM messages WHERE seq > ? AND done_at IS NULL ORDER BY seq LIMIT 1),
		(SELECT MAX(seq) FROM messages)`, floor).Scan(&first, &newest)
	if err != nil {
		return fmt.Errorf("find the oldest pending message: %w", err)
	}
	switch {
	case first.Valid:
		floor = max(floor, first.Int64-1)
	case newest.Valid:
		floor = max(floor, newest.Int64)
	default:
		return nil
	}
	return s.writeExec(ctx, func(ctx context.Context) error {
		if _, err := s.wc.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, queueFloorKey, strconv.FormatInt(floor, 10)); err != nil {
			return fmt.Errorf("write the queue floor: %w", err)
		}
		s.queueFloor.Store(max(s.queueFloor.Load(), floor))
		return nil
	})
}

// PublishedRecord is one outbox row: its sequence number and EventBridge envelope JSON.
type PublishedRecord struct {
	Seq        int64
	DetailType events.DetailType
	Envelope   []byte
}

// PublishedSince returns up to limit outbox rows after seq, in order.
func (s *Store) PublishedSince(ctx context.Context, seq int64, limit int) ([]PublishedRecord, error) {
	recs, err := queryAll(ctx, s.r, "read outbox", func(r *sql.Rows) (rec PublishedRecord, err error) {
		var id string
		var env []byte
		var sec, crc sql.NullInt64
		if err = r.Scan(&rec.Seq, &id, &rec.DetailType, &env, &sec, &crc); err != nil {
			return rec, err
		}
		rec.Envelope = envelopeOf(id, string(rec.DetailType), env, sec)
		return rec, s.checkRow(outboxTable, rec.Seq, string(rec.DetailType), rec.Envelope, crc)
	}, `SELECT seq, event_id, detail_type, envelope, at, crc FROM published WHERE seq > ? ORDER BY seq LIMIT ?`, seq, limit)
	return recs, s.noteOutboxRead(err)
}

// LastPublishedSeq is the sequence number of the newest outbox row ever written (0 if
// none), pruned or not.
func (s *Store) LastPublishedSeq(ctx context.Context) (int64, error) {
	_, newest, err := s.PublishedRange(ctx)
	return newest, err
}

// PublishedRange returns the sequence number of the oldest outbox row kept and of the
// newest ever written: rows before oldest were pruned (oldest is newest+1 when none is
// kept; 1 and 0 for an outbox never written).
func (s *Store) PublishedRange(ctx context.Context) (oldest, newest int64, err error) {
	var lo, hi, assigned sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT MIN(seq), MAX(seq), (SELECT CAST(value AS INTEGER) FROM meta WHERE key = '`+outboxFloorKey+`') FROM published`).
		Scan(&lo, &hi, &assigned); err != nil {
		return 0, 0, fmt.Errorf("read outbox range: %w", err)
	}
	newest = max(hi.Int64, assigned.Int64)
	if !lo.Valid {
		return newest + 1, newest, nil
	}
	return lo.Int64, newest, nil
}

// PrunePublished forgets the outbox rows published before cutoff (their envelope's time),
// whatever reads them (a webhook lagging that far skips them) and returns how many. What
// goes is found on a reader's connection and deleted a chunk per transaction (pruneStep).
//
// The outbox's newest row may go too: its position is recorded as the outbox floor in the
// delete's transaction (outboxFloorTrigger), and while the prune runs, and after it until
// a row is written above the floor, the writer writes its first row of a commit above the
// floor (publishAboveFloor).
func (s *Store) PrunePublished(ctx context.Context, cutoff time.Time) (int64, error) {
	bound, err := s.firstPublishedAfter(ctx, cutoff)
	if err != nil || bound == 0 {
		if err != nil {
			err = fmt.Errorf("prune outbox: %w", s.noteRead(err))
		}
		return 0, err
	}
	s.outboxLow.Store(true)
	n, err := s.pruneChunks(ctx, "prune outbox", `DELETE FROM published WHERE seq IN
		(SELECT seq FROM published WHERE seq < ? ORDER BY seq LIMIT ?)`, bound)
	return n, errors.Join(err, s.writeAlone(ctx, s.checkOutboxFloor))
}

// checkOutboxFloor tells the writer whether the outbox holds a row above its floor (the
// writer's own goroutine, between commits): if not, the next row is written above the
// floor (publishAboveFloor).
func (s *Store) checkOutboxFloor(ctx context.Context) error {
	var low bool
	if err := s.wc.QueryRowContext(ctx, `SELECT IFNULL((SELECT MAX(seq) FROM published), 0) <
		IFNULL((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '`+outboxFloorKey+`'), 0)`).Scan(&low); err != nil {
		s.outboxLow.Store(true)
		return fmt.Errorf("read the outbox floor: %w", err)
	}
	s.outboxLow.Store(low)
	return nil
}

// publishAboveFloor writes the first of rows at the position after the outbox floor and the
// newest row, when the outbox may hold no row above its floor (outboxLow: SQLite would hand
// out the position after the newest row kept, at or below the floor), and returns the rows
// left to write and how many it wrote (0 or 1).
func (s *Store) publishAboveFloor(ctx context.Context, rows []outboxRow) (int, []outboxRow, error) {
	if len(rows) == 0 || !s.outboxLow.Load() {
		return 0, rows, nil
	}
	r := rows[0]
	data, err := events.AppendEnvelope(s.envBuf[:0], r.p, LocalAccount, LocalRegion, r.at)
	if err != nil {
		return 0, rows, fmt.Errorf("encode %s envelope: %w", r.p.DetailType(), err)
	}
	s.envBuf = data
	stored, sec, prefix := compact(s.prefixBuf, data, r.p.ID(), string(r.p.DetailType()), r.at)
	s.prefixBuf = prefix
	res, err := s.wc.ExecContext(ctx, `INSERT OR IGNORE INTO published (seq, event_id, detail_type, envelope, at, crc)
		VALUES (MAX(IFNULL((SELECT MAX(seq) FROM published), 0), IFNULL((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '`+outboxFloorKey+`'), 0)) + 1, ?, ?, ?, ?, ?)`,
		r.p.ID(), string(r.p.DetailType()), string(stored), sec, rowCRC(string(r.p.DetailType()), data))
	if err != nil {
		return 0, rows, fmt.Errorf("publish %s %s: %w", r.p.DetailType(), r.p.ID(), err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return 0, rows[1:], nil
	}
	if id, err := res.LastInsertId(); err == nil {
		s.tent.Published = max(s.tent.Published, id)
	}
	return 1, rows[1:], nil
}

// firstPublishedAfter is the sequence number of the oldest outbox row published at or
// after cutoff (rows are published in time order), or one past the newest, 0 when there
// is nothing to prune.
func (s *Store) firstPublishedAfter(ctx context.Context, cutoff time.Time) (int64, error) {
	after := int64(0)
	for {
		rows, err := s.r.QueryContext(ctx, `SELECT seq, envelope, at FROM published WHERE seq > ? ORDER BY seq LIMIT 500`, after)
		if err != nil {
			return 0, fmt.Errorf("read outbox: %w", err)
		}
		n := 0
		for rows.Next() {
			var seq int64
			var env string
			var sec sql.NullInt64
			if err := rows.Scan(&seq, &env, &sec); err != nil {
				rows.Close()
				return 0, err
			}
			n++
			var e struct {
				Time time.Time `json:"time"`
			}
			if sec.Valid {
				e.Time = time.Unix(sec.Int64, 0)
			} else if json.Unmarshal([]byte(env), &e) != nil {
				e.Time = time.Time{}
			}
			if !e.Time.IsZero() && !e.Time.Before(cutoff) {
				rows.Close()
				return seq, nil
			}
			after = seq
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return after + 1, nil // every row is older: all go
		}
	}
}

// Log returns the connection events of the log in sequence order (for tests and tools).
func (s *Store) Log(ctx context.Context) ([]events.ConnectionEvent, error) {
	return queryAll(ctx, s.r, "read log", func(r *sql.Rows) (e events.ConnectionEvent, err error) {
		var data string
		if err := r.Scan(&data); err != nil {
			return e, err
		}
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			return e, fmt.Errorf("decode stored event: %w", err)
		}
		return e, nil
	}, `SELECT data FROM log WHERE type <> '`+graceRecordType+`' ORDER BY seq`)
}

// Cursor returns the outbox position a named subscriber has acknowledged (0 if none).
func (s *Store) Cursor(ctx context.Context, name string) (int64, error) {
	var seq int64
	err := s.r.QueryRowContext(ctx, `SELECT seq FROM cursors WHERE name = ?`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read cursor %s: %w", name, err)
	}
	return seq, nil
}

// SetCursor records that a named subscriber acknowledged the outbox up to seq.
func (s *Store) SetCursor(ctx context.Context, name string, seq int64) error {
	return s.writeExec(ctx, func(ctx context.Context) error {
		if _, err := s.wc.ExecContext(ctx, `INSERT INTO cursors (name, seq) VALUES (?, ?)
			ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, name, seq); err != nil {
			return fmt.Errorf("write cursor %s: %w", name, err)
		}
		return nil
	})
}

// queryAll runs a query and scans every row with scan; errors name what was read.
func queryAll[T any](ctx context.Context, q queryer, what string, scan func(*sql.Rows) (T, error), query string, args ...any) ([]T, error) {
	var out []T
	err := scanEach(ctx, q, query, func(r *sql.Rows) error {
		v, err := scan(r)
		out = append(out, v)
		return err
	}, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// queryer is a *sql.DB (the readers) or a *sql.Conn (the writer's connection).
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// scanEach runs query and calls each for every row.
func scanEach(ctx context.Context, q queryer, query string, each func(*sql.Rows) error, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
