package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// Local values of the EventBridge envelope fields that name an AWS account and region.
const (
	LocalAccount = "000000000000"
	LocalRegion  = "local"
)

const projectorName = "presence"

// projectBatchSize is how many log entries one projector transaction folds.
const projectBatchSize = 1000

// Projection reports what a projector run did.
type Projection struct {
	// Events is the number of log entries folded.
	Events int
	// Published is the number of events written to the outbox.
	Published int
	// Graces lists the grace periods the run started: run ExpireGrace(UserID, Since) at
	// Since plus the grace period.
	Graces []presence.Grace
	// Checkpoint is the sequence number the view has folded up to.
	Checkpoint int64
	// decided holds what each grace decision folded decided, by its log key.
	decided map[string]presence.Effects
}

// Project folds every log entry past the checkpoint into the view, in batches, each batch
// one transaction with its outbox rows and the new checkpoint. Only one projector may run
// at a time per store; it is safe to call again after an error (it resumes at the last
// committed checkpoint).
func (s *Store) Project(ctx context.Context) (Projection, error) {
	var total Projection
	for {
		p, err := s.projectBatch(ctx)
		total.Events += p.Events
		total.Published += p.Published
		total.Graces = append(total.Graces, p.Graces...)
		if p.Checkpoint > 0 {
			total.Checkpoint = p.Checkpoint
		}
		if err != nil {
			return total, err
		}
		if p.Events < projectBatchSize {
			return total, nil
		}
	}
}

// batchView caches the rows a projector batch touches.
type batchView struct {
	tx    *sql.Tx
	users map[string]*presence.User
	conns map[string]*presence.Conn
	dirtU map[string]bool
	dirtC map[string]bool
}

func (s *Store) projectBatch(ctx context.Context) (p Projection, err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return p, fmt.Errorf("projector begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	p, folded, err := s.foldFeed(ctx, tx, projectBatchSize)
	if err != nil {
		return p, err
	}
	if p.Events == 0 {
		_ = tx.Rollback()
		return p, nil
	}
	if err := tx.Commit(); err != nil {
		return p, fmt.Errorf("projector commit: %w", err)
	}
	s.observeFolded(folded)
	return p, nil
}

// observeFolded reports the fold lag of events just committed.
func (s *Store) observeFolded(folded []events.ConnectionEvent) {
	if s.opts.OnProjected == nil {
		return
	}
	now := s.opts.Now()
	for _, e := range folded {
		s.opts.OnProjected(now.Sub(e.At))
	}
}

// foldFeed folds the log entries past the checkpoint (at most limit; 0 means all) into the
// view inside tx, with their outbox rows and the new checkpoint, and returns what it did
// and the events it folded. The writer calls it in every group commit, so the view never
// trails the log; Project calls it for whatever a previous version left unfolded.
func (s *Store) foldFeed(ctx context.Context, tx *sql.Tx, limit int) (p Projection, folded []events.ConnectionEvent, err error) {
	var cp int64
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM checkpoints WHERE name = ?`, projectorName).Scan(&cp); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return p, nil, fmt.Errorf("read checkpoint: %w", err)
	}
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := tx.QueryContext(ctx, `SELECT seq, type, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, cp, limit)
	if err != nil {
		return p, nil, fmt.Errorf("read change feed: %w", err)
	}
	type entry struct {
		seq   int64
		e     events.ConnectionEvent
		grace *graceDecision
	}
	var feed []entry
	for rows.Next() {
		var en entry
		var typ, data string
		if err := rows.Scan(&en.seq, &typ, &data); err != nil {
			rows.Close()
			return p, nil, fmt.Errorf("scan change feed: %w", err)
		}
		var v any = &en.e
		if typ == graceRecordType {
			en.grace = &graceDecision{}
			v = en.grace
		}
		if err := json.Unmarshal([]byte(data), v); err != nil {
			rows.Close()
			return p, nil, fmt.Errorf("decode log entry %d: %w", en.seq, err)
		}
		feed = append(feed, en)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return p, nil, fmt.Errorf("read change feed: %w", err)
	}
	p.Checkpoint = cp
	if len(feed) == 0 {
		return p, nil, nil
	}
	bv := &batchView{tx: tx, users: map[string]*presence.User{}, conns: map[string]*presence.Conn{},
		dirtU: map[string]bool{}, dirtC: map[string]bool{}}
	graces := map[string]time.Time{}
	for _, en := range feed {
		if g := en.grace; g != nil {
			// A grace timer's logged decision, in log order.
			u, err := bv.user(ctx, g.UserID)
			if err != nil {
				return p, nil, err
			}
			nu, eff := presence.ExpireGracePeriod(*u, g.Since, g.At, s.opts.Grace)
			if nu != *u {
				*u = nu
				bv.dirtU[nu.ID] = true
			}
			for _, pub := range eff.Publish {
				ok, err := insertPublished(ctx, tx, pub, g.At)
				if err != nil {
					return p, nil, err
				}
				if ok {
					p.Published++
				}
			}
			if !nu.GracePending() {
				delete(graces, nu.ID)
			}
			if p.decided == nil {
				p.decided = map[string]presence.Effects{}
			}
			p.decided[g.key()] = eff
			p.Checkpoint = en.seq
			continue
		}
		u, err := bv.user(ctx, en.e.UserID)
		if err != nil {
			return p, nil, err
		}
		c, err := bv.conn(ctx, en.e.ConnectionID)
		if err != nil {
			return p, nil, err
		}
		nu, nc, eff := presence.Apply(*u, *c, en.e, s.opts.Grace)
		if nu != *u {
			*u = nu
			bv.dirtU[nu.ID] = true
		}
		if nc != *c {
			*c = nc
			bv.dirtC[nc.ID] = true
		}
		for _, pub := range eff.Publish {
			ok, err := insertPublished(ctx, tx, pub, en.e.At)
			if err != nil {
				return p, nil, err
			}
			if ok {
				p.Published++
			}
		}
		if eff.GraceStarted {
			graces[nu.ID] = nu.OfflineSince
		} else if !nu.GracePending() {
			delete(graces, nu.ID)
		}
		p.Checkpoint = en.seq
		folded = append(folded, en.e)
	}
	if err := bv.flush(ctx); err != nil {
		return p, nil, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints (name, seq) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, projectorName, p.Checkpoint); err != nil {
		return p, nil, fmt.Errorf("write checkpoint: %w", err)
	}
	p.Events = len(feed)
	for uid, d := range graces {
		p.Graces = append(p.Graces, presence.Grace{UserID: uid, Since: d})
	}
	return p, folded, nil
}

func (bv *batchView) user(ctx context.Context, id string) (*presence.User, error) {
	if u, ok := bv.users[id]; ok {
		return u, nil
	}
	u, err := loadUser(ctx, bv.tx, id)
	if err != nil {
		return nil, err
	}
	bv.users[id] = &u
	return &u, nil
}

func (bv *batchView) conn(ctx context.Context, id string) (*presence.Conn, error) {
	if c, ok := bv.conns[id]; ok {
		return c, nil
	}
	c, err := scanConn(bv.tx.QueryRowContext(ctx, `SELECT `+connColumns+` FROM view_connections WHERE connection_id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		c = presence.Conn{ID: id}
	case err != nil:
		return nil, fmt.Errorf("load connection %s: %w", id, err)
	}
	bv.conns[id] = &c
	return &c, nil
}

func (bv *batchView) flush(ctx context.Context) error {
	for id := range bv.dirtU {
		if err := saveUser(ctx, bv.tx, *bv.users[id]); err != nil {
			return err
		}
	}
	for id := range bv.dirtC {
		c := bv.conns[id]
		if _, err := bv.tx.ExecContext(ctx, `INSERT INTO view_connections (connection_id, user_id, opened_at, closed_at, reason, last_seen, is_live)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (connection_id) DO UPDATE SET opened_at = excluded.opened_at,
			closed_at = excluded.closed_at, reason = excluded.reason, last_seen = excluded.last_seen, is_live = excluded.is_live`,
			c.ID, c.UserID, toNanos(c.OpenedAt), toNanos(c.ClosedAt), nullString(string(c.Reason)), toNanos(c.LastSeen), c.Live()); err != nil {
			return fmt.Errorf("save connection %s: %w", c.ID, err)
		}
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func loadUser(ctx context.Context, q querier, id string) (presence.User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, `SELECT `+userColumns+` FROM view_users WHERE user_id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return presence.User{ID: id, Announced: presence.AnnouncedOffline}, nil
	case err != nil:
		return u, fmt.Errorf("load user %s: %w", id, err)
	}
	return u, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

const userColumns = `user_id, live, last_activity, announced, offline_since`

func scanUser(r scanner) (presence.User, error) {
	var u presence.User
	var last, since sql.NullInt64
	var announced string
	if err := r.Scan(&u.ID, &u.Live, &last, &announced, &since); err != nil {
		return u, err
	}
	u.LastActivity, u.OfflineSince, u.Announced = fromNanos(last), fromNanos(since), presence.Announced(announced)
	return u, nil
}

const connColumns = `connection_id, user_id, opened_at, closed_at, reason, last_seen`

func scanConn(r scanner) (presence.Conn, error) {
	var c presence.Conn
	var opened, closed, seen sql.NullInt64
	var reason sql.NullString
	if err := r.Scan(&c.ID, &c.UserID, &opened, &closed, &reason, &seen); err != nil {
		return c, err
	}
	c.OpenedAt, c.ClosedAt, c.LastSeen = fromNanos(opened), fromNanos(closed), fromNanos(seen)
	c.Reason = events.CloseReason(reason.String)
	return c, nil
}

func saveUser(ctx context.Context, tx *sql.Tx, u presence.User) error {
	announced := u.Announced
	if announced == "" {
		announced = presence.AnnouncedOffline
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO view_users (user_id, live, last_activity, announced, offline_since, online, grace_pending)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET live = excluded.live, last_activity = excluded.last_activity,
		announced = excluded.announced, offline_since = excluded.offline_since, online = excluded.online, grace_pending = excluded.grace_pending`,
		u.ID, u.Live, toNanos(u.LastActivity), string(announced), toNanos(u.OfflineSince), u.Online(), u.GracePending()); err != nil {
		return fmt.Errorf("save user %s: %w", u.ID, err)
	}
	return nil
}

// insertPublished writes p to the outbox unless an event with its id is there already.
func insertPublished(ctx context.Context, tx *sql.Tx, p events.Published, at time.Time) (bool, error) {
	env, err := events.NewEnvelope(p, LocalAccount, LocalRegion, at)
	if err != nil {
		return false, err
	}
	data, err := json.Marshal(env)
	if err != nil {
		return false, fmt.Errorf("encode %s envelope: %w", p.DetailType(), err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO published (event_id, detail_type, envelope) VALUES (?, ?, ?)
		ON CONFLICT (event_id) DO NOTHING`, p.ID(), string(p.DetailType()), string(data))
	if err != nil {
		return false, fmt.Errorf("publish %s %s: %w", p.DetailType(), p.ID(), err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// ExpireGrace runs the timer of userID's grace period that began at since, at now: the
// decision is a record of the log, appended and folded (presence.ExpireGracePeriod) in the
// writer's sequence, so it is decided against a state that holds every event committed
// before it, and a rebuild replays it. It returns what it decided: a UserOffline, written to
// the outbox in the same commit, or nothing when the period is not pending any more (the
// user came back, or the timer already decided it) or not over.
func (s *Store) ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error) {
	req := &writeReq{grace: &graceDecision{UserID: userID, Since: since.UTC(), At: now.UTC()}, done: make(chan error, 1)}
	if err := s.submit(ctx, req); err != nil {
		return presence.Effects{}, err
	}
	return req.decided, nil
}

// PendingGraces lists the grace timers to run: users with no live connection still
// announced online (after a restart, these timers are restored from here).
func (s *Store) PendingGraces(ctx context.Context) ([]presence.Grace, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT user_id, offline_since FROM view_users WHERE grace_pending = 1`)
	if err != nil {
		return nil, fmt.Errorf("list pending graces: %w", err)
	}
	defer rows.Close()
	var out []presence.Grace
	for rows.Next() {
		var uid string
		var since sql.NullInt64
		if err := rows.Scan(&uid, &since); err != nil {
			return nil, fmt.Errorf("list pending graces: %w", err)
		}
		out = append(out, presence.Grace{UserID: uid, Since: fromNanos(since)})
	}
	return out, rows.Err()
}

// Rebuild drops the view and folds the whole log again, the grace timers' logged decisions
// included, so the view it builds is the one the live runs built. The outbox keeps its
// rows: an event the rebuild decides again has the same id and is not published twice.
// Run it only while no other process uses the store.
func (s *Store) Rebuild(ctx context.Context) (Projection, error) {
	if _, err := s.w.ExecContext(ctx, dropView+viewSchema); err != nil {
		return Projection{}, fmt.Errorf("reset view: %w", err)
	}
	return s.Project(ctx)
}

func toNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func jsonUnmarshal(data string, v any) error {
	if err := json.Unmarshal([]byte(data), v); err != nil {
		return fmt.Errorf("decode stored event: %w", err)
	}
	return nil
}
