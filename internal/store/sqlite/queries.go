package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// OnlineUsers lists users with a live connection in user id order, starting after the id
// after ("" for the first page), at most limit of them.
func (s *Store) OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error) {
	return queryAll(ctx, s.r, "list online users", scanStatus, `SELECT user_id, live, last_activity FROM view_users
		WHERE online = 1 AND user_id > ? ORDER BY user_id LIMIT ?`, after, limit)
}

// Users returns the status of each id, in the order given; a user the view has never seen
// is offline with no last activity.
func (s *Store) Users(ctx context.Context, ids []string) ([]presence.Status, error) {
	out := make([]presence.Status, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
		out[i].UserID = id
	}
	list, err := queryAll(ctx, s.r, "read users", scanStatus, `SELECT user_id, live, last_activity FROM view_users WHERE user_id IN (?`+
		strings.Repeat(",?", len(ids)-1)+`)`, args...)
	if err != nil {
		return nil, err
	}
	found := make(map[string]presence.Status, len(list))
	for _, u := range list {
		found[u.UserID] = u
	}
	for i, id := range ids {
		if u, ok := found[id]; ok {
			out[i] = u
		}
	}
	return out, nil
}

// LiveConnections lists the ids of userID's live connections.
func (s *Store) LiveConnections(ctx context.Context, userID string) ([]string, error) {
	return queryAll(ctx, s.r, "list connections of "+userID, func(r *sql.Rows) (id string, err error) {
		return id, r.Scan(&id)
	}, `SELECT connection_id FROM view_connections
		WHERE user_id = ? AND is_live = 1 ORDER BY connection_id`, userID)
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

// Dump reads the whole view, ordered by id.
func (s *Store) Dump(ctx context.Context) (v View, err error) {
	v.Users, err = queryAll(ctx, s.r, "dump users", func(r *sql.Rows) (presence.User, error) { return scanUser(r) },
		`SELECT `+userColumns+` FROM view_users ORDER BY user_id`)
	if err != nil {
		return v, err
	}
	v.Connections, err = queryAll(ctx, s.r, "dump connections", func(r *sql.Rows) (presence.Conn, error) { return scanConn(r) },
		`SELECT `+connColumns+` FROM view_connections ORDER BY connection_id`)
	return v, err
}

// PruneTombstones forgets connections closed before cutoff and returns how many.
func (s *Store) PruneTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM view_connections WHERE closed_at IS NOT NULL AND closed_at < ?`, cutoff.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune tombstones: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// PruneMessages forgets delivered messages done more than retention ago: after that, their
// MessageId may be enqueued again.
func (s *Store) PruneMessages(ctx context.Context, retention time.Duration) (int64, error) {
	return s.deleteBefore(ctx, "prune messages", `DELETE FROM messages WHERE done_at IS NOT NULL AND done_at < ?`, retention)
}

func (s *Store) deleteBefore(ctx context.Context, what, query string, retention time.Duration) (int64, error) {
	res, err := s.w.ExecContext(ctx, query, s.opts.Now().Add(-retention).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return res.RowsAffected()
}

// PendingMessages returns up to limit queued messages not done yet whose sequence number is
// above after, oldest first.
func (s *Store) PendingMessages(ctx context.Context, after int64, limit int) ([]QueuedMessage, error) {
	return queryAll(ctx, s.r, "read queue", func(r *sql.Rows) (m QueuedMessage, err error) {
		var at int64
		err = r.Scan(&m.Seq, &m.MessageID, &m.UserID, &m.Body, &at)
		m.EnqueuedAt = time.Unix(0, at).UTC()
		return m, err
	}, `SELECT seq, message_id, user_id, body, enqueued_at FROM messages WHERE done_at IS NULL AND seq > ? ORDER BY seq LIMIT ?`, after, limit)
}

// Complete marks the queued messages seqs done and writes their outcomes to the outbox, in
// one transaction: the writer's group commit, shared with the appends and enqueues waiting
// with it. It returns once that commit is durable. A done message is remembered (see
// PruneMessages), so enqueueing the same MessageId for the same user again is ignored. It
// returns the number of outcomes published (an outcome already in the outbox is not
// published twice).
func (s *Store) Complete(ctx context.Context, seqs []int64, outcomes []events.Published) (published int, err error) {
	req := &writeReq{completes: seqs, outcomes: outcomes, done: make(chan error, 1)}
	if err := s.submit(ctx, req); err != nil {
		return 0, err
	}
	return req.published, nil
}

// complete marks seqs done and writes their outcomes to the outbox inside the writer's
// transaction, so completions share the group commit (and its fsync) with the appends and
// enqueues. It returns how many outcome events were new.
func (s *Store) complete(ctx context.Context, tx *sql.Tx, seqs []int64, outcomes []events.Published) (int, error) {
	published := 0
	now := s.opts.Now()
	for _, p := range outcomes {
		ok, err := insertPublished(ctx, tx, p, now)
		if err != nil {
			return 0, err
		}
		if ok {
			published++
		}
	}
	done, err := tx.PrepareContext(ctx, `UPDATE messages SET done_at = ?, body = '' WHERE seq = ?`)
	if err != nil {
		return 0, fmt.Errorf("prepare dequeue: %w", err)
	}
	defer done.Close()
	for _, seq := range seqs {
		if _, err := done.ExecContext(ctx, now.UnixNano(), seq); err != nil {
			return 0, fmt.Errorf("dequeue %d: %w", seq, err)
		}
	}
	return published, nil
}

// PublishedRecord is one outbox row: its sequence number and EventBridge envelope JSON.
type PublishedRecord struct {
	Seq        int64
	DetailType events.DetailType
	Envelope   []byte
}

// PublishedSince returns up to limit outbox rows after seq, in order.
func (s *Store) PublishedSince(ctx context.Context, seq int64, limit int) ([]PublishedRecord, error) {
	return queryAll(ctx, s.r, "read outbox", func(r *sql.Rows) (rec PublishedRecord, err error) {
		var env string
		err = r.Scan(&rec.Seq, &rec.DetailType, &env)
		rec.Envelope = []byte(env)
		return rec, err
	}, `SELECT seq, detail_type, envelope FROM published WHERE seq > ? ORDER BY seq LIMIT ?`, seq, limit)
}

// LastPublishedSeq is the sequence number of the newest outbox row (0 if none).
func (s *Store) LastPublishedSeq(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT MAX(seq) FROM published`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read outbox head: %w", err)
	}
	return seq.Int64, nil
}

// Log returns the whole connection log in sequence order (for tests and tools).
func (s *Store) Log(ctx context.Context) ([]events.ConnectionEvent, error) {
	return queryAll(ctx, s.r, "read log", func(r *sql.Rows) (e events.ConnectionEvent, err error) {
		var data string
		if err := r.Scan(&data); err != nil {
			return e, err
		}
		return e, jsonUnmarshal(data, &e)
	}, `SELECT data FROM events WHERE type <> '`+graceRecordType+`' ORDER BY seq`)
}

// AllLiveConnections lists every live connection of the view (after a restart of the
// local runtime these are the connections that died with the process).
func (s *Store) AllLiveConnections(ctx context.Context) ([]presence.Conn, error) {
	return queryAll(ctx, s.r, "list live connections", func(r *sql.Rows) (c presence.Conn, err error) {
		return c, r.Scan(&c.ID, &c.UserID)
	}, `SELECT connection_id, user_id FROM view_connections
		WHERE is_live = 1 ORDER BY user_id, connection_id`)
}

func scanStatus(r *sql.Rows) (u presence.Status, err error) {
	var last sql.NullInt64
	err = r.Scan(&u.UserID, &u.Connections, &last)
	u.LastActivity = fromNanos(last)
	return u, err
}

// queryAll runs a query and scans every row with scan; errors name what was read.
func queryAll[T any](ctx context.Context, db *sql.DB, what string, scan func(*sql.Rows) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// OnlineCount counts the users with a live connection.
func (s *Store) OnlineCount(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM view_users WHERE online = 1`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count online users: %w", err)
	}
	return n, nil
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
	if _, err := s.w.ExecContext(ctx, `INSERT INTO cursors (name, seq) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, name, seq); err != nil {
		return fmt.Errorf("write cursor %s: %w", name, err)
	}
	return nil
}

// LiveConnectionsOf lists the live connections of each of users in a few queries (every
// user asked for has an entry, empty when offline).
func (s *Store) LiveConnectionsOf(ctx context.Context, users []string) (map[string][]string, error) {
	out := make(map[string][]string, len(users))
	unique := users[:0:0]
	for _, u := range users {
		if _, ok := out[u]; !ok {
			out[u] = []string{}
			unique = append(unique, u)
		}
	}
	users = unique
	const chunk = 500
	for start := 0; start < len(users); start += chunk {
		part := users[start:min(start+chunk, len(users))]
		args := make([]any, len(part))
		for i, u := range part {
			args[i] = u
		}
		type pair struct{ user, conn string }
		rows, err := queryAll(ctx, s.r, "list live connections of users", func(r *sql.Rows) (p pair, err error) {
			return p, r.Scan(&p.user, &p.conn)
		}, `SELECT user_id, connection_id FROM view_connections WHERE is_live = 1
			AND user_id IN (?`+strings.Repeat(",?", len(part)-1)+`) ORDER BY user_id, connection_id`, args...)
		if err != nil {
			return nil, err
		}
		for _, p := range rows {
			out[p.user] = append(out[p.user], p.conn)
		}
	}
	return out, nil
}
