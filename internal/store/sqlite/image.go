package sqlite

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/btree"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// image is the view's rows in memory that the reads and the fold need at once: every user
// online or in its grace period, every live connection, and the rows changed since the
// last snapshot. The snapshot tables hold every row; a row the image does not hold is read
// from them (a user offline past its grace, a closed connection). Only the writer
// goroutine changes the image, after the commit that made the change durable, so readers
// never see a state the log does not hold. The writer reads it without the lock (no one
// else writes); readers take the read lock.
//
// What removes its entries: the snapshot that wrote a row of a user offline past its grace,
// or of a closed connection, evicts it (evict); PruneTombstones forgets closed connections.
type image struct {
	mu    sync.RWMutex
	users map[string]*presence.User
	conns map[string]*presence.Conn
	// live holds each user's live connection ids, sorted; online the users with one.
	live   map[string][]string
	online *btree.BTreeG[string]
	// seq is the position in the log the image has folded up to.
	seq int64
	// dirty lists what changed since the last snapshot: user ids, each with the ids of
	// its changed connections (the writer's alone, no lock).
	dirty map[string]map[string]struct{}
}

func newImage() *image {
	return &image{users: map[string]*presence.User{}, conns: map[string]*presence.Conn{},
		live: map[string][]string{}, online: btree.NewOrderedG[string](32), dirty: map[string]map[string]struct{}{}}
}

// put sets a user row and maintains the online index (lock held).
func (im *image) putUser(u presence.User) {
	old, ok := im.users[u.ID]
	if ok {
		*old = u
	} else {
		im.users[u.ID] = &u
	}
	if u.Online() {
		im.online.ReplaceOrInsert(u.ID)
	} else {
		im.online.Delete(u.ID)
	}
}

// putConn sets a connection row and maintains its user's live list (lock held).
func (im *image) putConn(c presence.Conn) {
	old, ok := im.conns[c.ID]
	wasLive := ok && old.Live()
	if ok {
		*old = c
	} else {
		im.conns[c.ID] = &c
	}
	switch isLive := c.Live(); {
	case isLive && !wasLive:
		l := im.live[c.UserID]
		i, _ := slices.BinarySearch(l, c.ID)
		im.live[c.UserID] = slices.Insert(l, i, c.ID)
	case wasLive && !isLive:
		l := im.live[c.UserID]
		if i, found := slices.BinarySearch(l, c.ID); found {
			l = slices.Delete(l, i, i+1)
		}
		if len(l) == 0 {
			delete(im.live, c.UserID)
		} else {
			im.live[c.UserID] = l
		}
	}
}

// evict drops the rows the snapshot just wrote that the image need not hold: closed
// connections, users offline past their grace (lock held; written is the dirty set the
// snapshot wrote).
func (im *image) evict(written map[string]map[string]struct{}) {
	for uid, conns := range written {
		for cid := range conns {
			if c := im.conns[cid]; c != nil && !c.Live() {
				delete(im.conns, cid)
			}
		}
		if u := im.users[uid]; u != nil && !u.Online() && !u.GracePending() {
			delete(im.users, uid)
		}
	}
}

// forgetConn removes a tombstone (lock held).
func (im *image) forgetConn(id string) {
	c, ok := im.conns[id]
	if !ok || c.Live() {
		return
	}
	delete(im.conns, id)
	if d := im.dirty[c.UserID]; d != nil {
		delete(d, id)
	}
}

func (im *image) markDirty(userID, connID string) {
	d := im.dirty[userID]
	if d == nil {
		d = map[string]struct{}{}
		im.dirty[userID] = d
	}
	if connID != "" {
		d[connID] = struct{}{}
	}
}

// fold is the fold of one group commit (or one replayed page of the log): the rows it
// changed, over the image, and what it decided. Nothing reaches the image before apply,
// which the writer calls once the commit is durable.
type fold struct {
	im     *image
	period time.Duration
	// rows reads the rows the image does not hold (nil: none); stored caches what it read
	// (nil for a row it does not hold), so a row read and left unchanged is not written
	// back. err is the first read that failed: the fold must not be committed.
	rows        rowReader
	storedUsers map[string]*presence.User
	storedConns map[string]*presence.Conn
	err         error
	users       map[string]*presence.User
	conns       map[string]*presence.Conn
	// order lists the touched user and connection ids in the order first touched.
	userOrder, connOrder []string
	// outbox lists the events to publish, with their times, in order.
	outbox []outboxRow
	graces map[string]time.Time
	events int
	folded []events.ConnectionEvent
}

type outboxRow struct {
	p  events.Published
	at time.Time
}

// rowReader reads a view row from the snapshot tables: found false when they hold none.
type rowReader interface {
	storedUser(id string) (u presence.User, found bool, err error)
	storedConn(id string) (c presence.Conn, found bool, err error)
}

func newFold(im *image, grace time.Duration, rows rowReader) *fold {
	return &fold{im: im, period: grace, rows: rows, users: map[string]*presence.User{}, conns: map[string]*presence.Conn{},
		graces: map[string]time.Time{}, storedUsers: map[string]*presence.User{}, storedConns: map[string]*presence.Conn{}}
}

// currentUser and currentConn return a row as of the fold's start: the image's, else the
// snapshot tables'.
func (f *fold) currentUser(id string) (presence.User, bool) {
	if f.rows == nil {
		return heldRow(f.im.users, id)
	}
	return currentRow(f, f.im.users, f.storedUsers, id, f.rows.storedUser)
}

func (f *fold) currentConn(id string) (presence.Conn, bool) {
	if f.rows == nil {
		return heldRow(f.im.conns, id)
	}
	return currentRow(f, f.im.conns, f.storedConns, id, f.rows.storedConn)
}

func heldRow[T any](held map[string]*T, id string) (T, bool) {
	if cur, ok := held[id]; ok {
		return *cur, true
	}
	var zero T
	return zero, false
}

// currentRow reads id's row from held (the image), else from stored (what the fold read
// already, nil for none), else with read, which it caches in stored; a failed read is the
// fold's error.
func currentRow[T any](f *fold, held, stored map[string]*T, id string, read func(string) (T, bool, error)) (T, bool) {
	if v, ok := heldRow(held, id); ok {
		return v, true
	}
	if v, ok := stored[id]; ok {
		if v == nil {
			var zero T
			return zero, false
		}
		return *v, true
	}
	v, found, err := read(id)
	if err != nil && f.err == nil {
		f.err = err
	}
	if !found || err != nil {
		stored[id] = nil
		return v, false
	}
	stored[id] = &v
	return v, true
}

func (f *fold) user(id string) *presence.User {
	if u, ok := f.users[id]; ok {
		return u
	}
	u := presence.User{ID: id, Announced: presence.AnnouncedOffline}
	if cur, ok := f.currentUser(id); ok {
		u = cur
	}
	f.users[id] = &u
	f.userOrder = append(f.userOrder, id)
	return &u
}

func (f *fold) conn(id string) *presence.Conn {
	if c, ok := f.conns[id]; ok {
		return c
	}
	c := presence.Conn{ID: id}
	if cur, ok := f.currentConn(id); ok {
		c = cur
	}
	f.conns[id] = &c
	f.connOrder = append(f.connOrder, id)
	return &c
}

// known reports whether e is already part of the fold: the connection's open (or close)
// is folded, or an activity no newer than the connection's last seen time, which would
// change nothing. Such an event is not appended again (the log's natural-key idempotency).
func (f *fold) known(e events.ConnectionEvent) bool {
	c := f.conns[e.ConnectionID]
	if c == nil {
		cur, ok := f.currentConn(e.ConnectionID)
		if !ok {
			return false
		}
		c = &cur
	}
	switch e.Type {
	case events.TypeConnectionOpened:
		return !c.OpenedAt.IsZero()
	case events.TypeConnectionClosed:
		return !c.ClosedAt.IsZero()
	default:
		return !e.At.After(c.LastSeen)
	}
}

// event folds a connection event (presence.Apply) in log order.
func (f *fold) event(e events.ConnectionEvent) {
	u, c := f.user(e.UserID), f.conn(e.ConnectionID)
	nu, nc, eff := presence.Apply(*u, *c, e, f.period)
	*u, *c = nu, nc
	for _, p := range eff.Publish {
		f.outbox = append(f.outbox, outboxRow{p: p, at: e.At})
	}
	if eff.GraceStarted {
		f.graces[nu.ID] = nu.OfflineSince
	} else if !nu.GracePending() {
		delete(f.graces, nu.ID)
	}
	f.events++
	f.folded = append(f.folded, e)
}

// grace folds a grace timer's decision (presence.ExpireGracePeriod) in log order and
// returns what it decided.
func (f *fold) grace(g graceDecision) presence.Effects {
	u := f.user(g.UserID)
	nu, eff := presence.ExpireGracePeriod(*u, g.Since, g.At, f.period)
	*u = nu
	for _, p := range eff.Publish {
		f.outbox = append(f.outbox, outboxRow{p: p, at: g.At})
	}
	if !nu.GracePending() {
		delete(f.graces, nu.ID)
	}
	f.events++
	return eff
}

// apply makes the fold's rows the image's, at log position seq (the commit is durable).
func (f *fold) apply(seq int64) {
	im := f.im
	im.mu.Lock()
	defer im.mu.Unlock()
	for _, id := range f.userOrder {
		u := f.users[id]
		if cur, ok := im.users[id]; ok && *cur == *u {
			continue
		}
		if stored := f.storedUsers[id]; stored != nil && *stored == *u {
			continue // read from the snapshot tables, unchanged
		}
		im.putUser(*u)
		im.markDirty(id, "")
	}
	for _, id := range f.connOrder {
		c := f.conns[id]
		if cur, ok := im.conns[id]; ok && *cur == *c {
			continue
		}
		if stored := f.storedConns[id]; stored != nil && *stored == *c {
			continue
		}
		im.putConn(*c)
		im.markDirty(c.UserID, id)
	}
	if seq > im.seq {
		im.seq = seq
	}
}

// projection reports what the fold did.
func (f *fold) projection(published int, checkpoint int64) Projection {
	p := Projection{Events: f.events, Published: published, Checkpoint: checkpoint}
	for uid, since := range f.graces {
		p.Graces = append(p.Graces, presence.Grace{UserID: uid, Since: since})
	}
	sort.Slice(p.Graces, func(i, j int) bool { return p.Graces[i].UserID < p.Graces[j].UserID })
	return p
}
