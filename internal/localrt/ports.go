package localrt

import (
	"context"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/onlineapi"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// The ports of the local runtime, each declared here, by the code that uses it, with only
// what that code calls; the SQLite store implements all four. Every method is safe for
// concurrent use; writes return once durable, and sqlite.ErrClosed after the store closed.

// connectionLog appends connection events (the WebSocket endpoint, recovery and the
// reconciliation): idempotent by natural key, folded into the view in the same commit.
type connectionLog interface {
	Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error)
}

// messageQueue is the local queue: the pump gets what each commit queued from the store's
// OnQueued hook, and reads the table only for what a previous run left pending.
type messageQueue interface {
	Enqueue(ctx context.Context, msgs ...sqlite.QueuedMessage) error
	PendingMessages(ctx context.Context, after int64, limit int) ([]sqlite.QueuedMessage, error)
	CompleteKeeping(ctx context.Context, msgs []sqlite.QueuedMessage, outcomes []events.Published, keep []bool) (int, error)
	PruneMessages(ctx context.Context, retention time.Duration) (int64, error)
}

// outboxReader is what /events and the webhooks read: the published events in order, and a
// durable cursor per webhook.
type outboxReader interface {
	PublishedSince(ctx context.Context, seq int64, limit int) ([]sqlite.PublishedRecord, error)
	LastPublishedSeq(ctx context.Context) (int64, error)
	PublishedRange(ctx context.Context) (oldest, newest int64, err error)
	Cursor(ctx context.Context, name string) (int64, error)
	SetCursor(ctx context.Context, name string, seq int64) error
	// Epoch names the history the positions belong to (a restore starts another).
	Epoch() string
}

// presenceView is the view (the store's memory image): what REST, the dashboard and the delivery read, and the
// decisions the grace timers and the pruning ask of it.
type presenceView interface {
	onlineapi.View
	LiveConnectionsOf(users []string) map[string][]string
	AllLiveConnections(ctx context.Context) ([]presence.Conn, error)
	OnlineCount(ctx context.Context) (int, error)
	PendingGraces(ctx context.Context) ([]presence.Grace, error)
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	PruneTombstones(ctx context.Context, cutoff time.Time) (int, error)
}

var (
	_ connectionLog = (*sqlite.Store)(nil)
	_ messageQueue  = (*sqlite.Store)(nil)
	_ outboxReader  = (*sqlite.Store)(nil)
	_ presenceView  = (*sqlite.Store)(nil)
)
