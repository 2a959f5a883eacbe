package localrt

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
)

// hub tracks the live WebSocket connections of this process. It is the local stand-in for
// API Gateway's connection registry: Post is the Management API's PostToConnection.
type hub struct {
	mu      sync.Mutex
	conns   map[string]*wsConn
	perUser map[string]int
	limit   int
	// closing is set once shutdown began: no new connection is admitted.
	closing bool
	// writeTimeout bounds one post to a connection.
	writeTimeout time.Duration
}

var _ delivery.Poster = (*hub)(nil)

func newHub(limit int) *hub {
	return &hub{conns: map[string]*wsConn{}, perUser: map[string]int{}, limit: limit, writeTimeout: 10 * time.Second}
}

// reserve takes one of userID's connection slots; it fails when the user is at the cap or
// the hub is closing. Each successful reserve is paired with release.
func (h *hub) reserve(userID string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closing:
		return errClosing
	case h.perUser[userID] >= h.limit:
		return errTooManyConnections
	}
	h.perUser[userID]++
	return nil
}

func (h *hub) release(userID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.perUser[userID]--; h.perUser[userID] <= 0 {
		delete(h.perUser, userID)
	}
}

func (h *hub) add(c *wsConn) {
	h.mu.Lock()
	h.conns[c.id] = c
	h.mu.Unlock()
}

func (h *hub) remove(c *wsConn) {
	h.mu.Lock()
	delete(h.conns, c.id)
	h.mu.Unlock()
}

func (h *hub) get(id string) *wsConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[id]
}

// closeAll marks the hub closing and returns the connections to close.
func (h *hub) closeAll() []*wsConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closing = true
	out := make([]*wsConn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}

func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// Post writes data as one text frame to the connection. A connection this process does
// not hold, or whose write fails, is gone.
func (h *hub) Post(ctx context.Context, connectionID string, data []byte) error {
	c := h.get(connectionID)
	if c == nil {
		return fmt.Errorf("post to %s: %w", connectionID, delivery.ErrConnectionGone)
	}
	ctx, cancel := context.WithTimeout(ctx, h.writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, data); err != nil {
		c.setReason(events.ReasonExpired)
		c.ws.CloseNow()
		return fmt.Errorf("post to %s: %w: %w", connectionID, delivery.ErrConnectionGone, err)
	}
	return nil
}

// wsConn is one live WebSocket connection.
type wsConn struct {
	id, userID string
	ws         *websocket.Conn
	// drop ends the connection at once, without waiting for a close handshake.
	drop context.CancelFunc
	// reason is the close reason decided by whoever closed the connection first; the
	// read loop records it (client when nobody else decided).
	reason atomic.Pointer[events.CloseReason]
	// lastRead is the unix-nano time of the last frame received.
	lastRead atomic.Int64
}

// setReason records why the server is closing c, unless a reason was already set.
func (c *wsConn) setReason(r events.CloseReason) {
	c.reason.CompareAndSwap(nil, &r)
}

func (c *wsConn) closeReason() events.CloseReason {
	if r := c.reason.Load(); r != nil {
		return *r
	}
	return events.ReasonClient
}
