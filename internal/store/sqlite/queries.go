package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// UserStatus is what the view says of one user.
type UserStatus struct {
	UserID       string
	Connections  int
	LastActivity time.Time // zero if never seen
}

// Online reports whether the user has a live connection.
func (u UserStatus) Online() bool { return u.Connections > 0 }

// OnlineUsers lists users with a live connection in user id order, starting after the id
// after ("" for the first page), at most limit of them.
func (s *Store) OnlineUsers(ctx context.Context, after string, limit int) ([]UserStatus, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT user_id, live, last_activity FROM view_users
		WHERE live > 0 AND user_id > ? ORDER BY user_id LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list online users: %w", err)
	}
	defer rows.Close()
	var out []UserStatus
	for rows.Next() {
		var u UserStatus
		var last sql.NullInt64
		if err := rows.Scan(&u.UserID, &u.Connections, &last); err != nil {
			return nil, fmt.Errorf("list online users: %w", err)
		}
		u.LastActivity = fromNanos(last)
		out = append(out, u)
	}
	return out, rows.Err()
}

// Users returns the status of each id, in the order given; a user the view has never seen
// is offline with no last activity.
func (s *Store) Users(ctx context.Context, ids []string) ([]UserStatus, error) {
	out := make([]UserStatus, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
		out[i].UserID = id
	}
	rows, err := s.r.QueryContext(ctx, `SELECT user_id, live, last_activity FROM view_users WHERE user_id IN (?`+
		strings.Repeat(",?", len(ids)-1)+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	defer rows.Close()
	found := make(map[string]UserStatus, len(ids))
	for rows.Next() {
		var u UserStatus
		var last sql.NullInt64
		if err := rows.Scan(&u.UserID, &u.Connections, &last); err != nil {
			return nil, fmt.Errorf("read users: %w", err)
		}
		u.LastActivity = fromNanos(last)
		found[u.UserID] = u
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read users: %w", err)
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
	rows, err := s.r.QueryContext(ctx, `SELECT connection_id FROM view_connections
		WHERE user_id = ? AND opened_at IS NOT NULL AND closed_at IS NULL ORDER BY connection_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list connections of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list connections of %s: %w", userID, err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
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
func (s *Store) Dump(ctx context.Context) (View, error) {
	var v View
	rows, err := s.r.QueryContext(ctx, `SELECT user_id FROM view_users ORDER BY user_id`)
	if err != nil {
		return v, fmt.Errorf("dump users: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return v, fmt.Errorf("dump users: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		u, err := loadUser(ctx, s.r, id)
		if err != nil {
			return v, err
		}
		v.Users = append(v.Users, u)
	}
	crow, err := s.r.QueryContext(ctx, `SELECT connection_id, user_id, opened_at, closed_at, reason, last_seen
		FROM view_connections ORDER BY connection_id`)
	if err != nil {
		return v, fmt.Errorf("dump connections: %w", err)
	}
	defer crow.Close()
	for crow.Next() {
		var c presence.Conn
		var opened, closed, seen sql.NullInt64
		var reason sql.NullString
		if err := crow.Scan(&c.ID, &c.UserID, &opened, &closed, &reason, &seen); err != nil {
			return v, fmt.Errorf("dump connections: %w", err)
		}
		c.OpenedAt, c.ClosedAt, c.LastSeen, c.Reason = fromNanos(opened), fromNanos(closed), fromNanos(seen), events.CloseReason(reason.String)
		v.Connections = append(v.Connections, c)
	}
	return v, crow.Err()
}

// PruneTombstones forgets closed connections that closed more than retention ago.
func (s *Store) PruneTombstones(ctx context.Context, retention time.Duration) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM view_connections WHERE closed_at IS NOT NULL AND closed_at < ?`,
		s.opts.Now().Add(-retention).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune tombstones: %w", err)
	}
	return res.RowsAffected()
}

// PruneMessages forgets delivered messages done more than retention ago: after that, their
// MessageId may be enqueued again.
func (s *Store) PruneMessages(ctx context.Context, retention time.Duration) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM messages WHERE done_at IS NOT NULL AND done_at < ?`,
		s.opts.Now().Add(-retention).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune messages: %w", err)
	}
	return res.RowsAffected()
}

// PendingMessages returns up to limit queued messages, oldest first.
func (s *Store) PendingMessages(ctx context.Context, limit int) ([]QueuedMessage, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT seq, message_id, user_id, body, enqueued_at FROM messages WHERE done_at IS NULL ORDER BY seq LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("read queue: %w", err)
	}
	defer rows.Close()
	var out []QueuedMessage
	for rows.Next() {
		var m QueuedMessage
		var at int64
		if err := rows.Scan(&m.Seq, &m.MessageID, &m.UserID, &m.Body, &at); err != nil {
			return nil, fmt.Errorf("read queue: %w", err)
		}
		m.EnqueuedAt = time.Unix(0, at).UTC()
		out = append(out, m)
	}
	return out, rows.Err()
}

// Complete marks the queued messages seqs done and writes their outcomes to the outbox, in
// one transaction. A done message is remembered (see PruneMessages), so enqueueing the same
// MessageId for the same user again is ignored. It returns the number of outcomes published (an outcome already in the
// outbox is not published twice).
func (s *Store) Complete(ctx context.Context, seqs []int64, outcomes []events.Published) (published int, err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("complete begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
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
	for _, seq := range seqs {
		if _, err := tx.ExecContext(ctx, `UPDATE messages SET done_at = ?, body = '' WHERE seq = ?`, now.UnixNano(), seq); err != nil {
			return 0, fmt.Errorf("dequeue %d: %w", seq, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("complete commit: %w", err)
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
	rows, err := s.r.QueryContext(ctx, `SELECT seq, detail_type, envelope FROM published WHERE seq > ? ORDER BY seq LIMIT ?`, seq, limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []PublishedRecord
	for rows.Next() {
		var r PublishedRecord
		var env string
		if err := rows.Scan(&r.Seq, &r.DetailType, &env); err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		r.Envelope = []byte(env)
		out = append(out, r)
	}
	return out, rows.Err()
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
	rows, err := s.r.QueryContext(ctx, `SELECT data FROM events ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("read log: %w", err)
	}
	defer rows.Close()
	var out []events.ConnectionEvent
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("read log: %w", err)
		}
		var e events.ConnectionEvent
		if err := jsonUnmarshal(data, &e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// AllLiveConnections lists every live connection of the view (after a restart of the
// local runtime these are the connections that died with the process).
func (s *Store) AllLiveConnections(ctx context.Context) ([]presence.Conn, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT connection_id, user_id FROM view_connections
		WHERE opened_at IS NOT NULL AND closed_at IS NULL ORDER BY user_id, connection_id`)
	if err != nil {
		return nil, fmt.Errorf("list live connections: %w", err)
	}
	defer rows.Close()
	var out []presence.Conn
	for rows.Next() {
		var c presence.Conn
		if err := rows.Scan(&c.ID, &c.UserID); err != nil {
			return nil, fmt.Errorf("list live connections: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
