// Package sweeper is the scheduled backstop of the AWS runtime for $disconnect, which API
// Gateway delivers only on a best-effort basis: it lists live connections with no activity
// past a threshold, asks API Gateway whether each still exists, and appends
// ConnectionClosed{swept} for the dead ones. It also forgets tombstones past their
// retention. A Handler is safe for concurrent use if its ports are.
package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// View lists stale connections and prunes tombstones (package dynamo's Store).
type View interface {
	StaleConnections(ctx context.Context, cutoff time.Time) ([]presence.StaleConnection, error)
	PruneTombstones(ctx context.Context, cutoff time.Time) (int, error)
}

// Log appends connection events idempotently.
type Log interface {
	Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error)
}

// Gateway says whether a connection still exists.
type Gateway interface {
	Alive(ctx context.Context, connectionID string) (bool, error)
}

// Handler sweeps.
type Handler struct {
	View    View
	Log     Log
	Gateway Gateway
	// StaleAfter is how long without activity makes a connection worth checking.
	StaleAfter time.Duration
	// Retention is how long tombstones are kept.
	Retention time.Duration
	Now       func() time.Time
	Logger    *slog.Logger
}

// Result reports one sweep.
type Result struct {
	Checked int `json:"checked"`
	Swept   int `json:"swept"`
	Pruned  int `json:"pruned"`
}

// Handle runs one sweep; the scheduled event's content does not matter.
func (h *Handler) Handle(ctx context.Context, _ any) (Result, error) {
	now := h.Now()
	var res Result
	stale, err := h.View.StaleConnections(ctx, now.Add(-h.StaleAfter))
	if err != nil {
		return res, err
	}
	var errs []error
	for _, c := range stale {
		res.Checked++
		alive, err := h.Gateway.Alive(ctx, c.ConnectionID)
		if err != nil {
			errs = append(errs, fmt.Errorf("check %s: %w", c.ConnectionID, err))
			continue
		}
		if alive {
			continue
		}
		if _, err := h.Log.Append(ctx, events.Closed(c.UserID, c.ConnectionID, now, events.ReasonSwept)); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Swept++
		h.Logger.InfoContext(ctx, "swept dead connection", "userId", c.UserID, "connectionId", c.ConnectionID, "lastSeen", c.LastSeen)
	}
	res.Pruned, err = h.View.PruneTombstones(ctx, now.Add(-h.Retention))
	errs = append(errs, err)
	h.Logger.InfoContext(ctx, "sweep done", "checked", res.Checked, "swept", res.Swept, "pruned", res.Pruned)
	return res, errors.Join(errs...)
}
