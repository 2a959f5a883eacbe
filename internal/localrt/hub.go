package localrt

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

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
}

func newHub(limit int) *hub {
	return &hub{conns: map[string]*wsConn{}, perUser: map[string]int{}, limit: limit}
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

// errGone is what a frame's receipt says when its connection ended before writing it.
var errGone = fmt.Errorf("connection ended before the frame was written: %w", delivery.ErrConnectionGone)

// post queues data as one text frame of p's message for c; p's receipt is called once,
// from the connection's writer, with nil once the frame has been written to the socket,
// or with an error wrapping delivery.ErrConnectionGone if the connection ended first. A
// connection whose send queue is full (a reader too slow to keep up) is gone at once,
// closed with 1013 as expired.
func (h *hub) post(c *wsConn, data []byte, p *inFlight) error {
	return c.queued(c.enqueue(frame{data: data, p: p}))
}

// queued turns enqueue's answer into post's.
func (c *wsConn) queued(ok bool) error {
	if ok {
		return nil
	}
	c.setReason(events.ReasonExpired)
	if ws := c.socket(); ws != nil {
		go ws.Close(websocket.StatusTryAgainLater, "send queue full")
	}
	return &delivery.GoneError{Reason: events.ReasonExpired, Err: fmt.Errorf("post to %s: send queue full", c.id)}
}

// frame is one queued text frame and the message it carries, whose receipt its write
// calls (the message's in flight, not a function value: no closure per frame).
type frame struct {
	data []byte
	p    *inFlight
	// replayable makes the receipt p.replayable instead of p.receipt.
	replayable bool
}

// written is the frame's receipt: err nil once it was written, else why it was not.
func (f frame) written(err error) {
	if f.replayable {
		f.p.replayable(err)
		return
	}
	f.p.receipt(err)
}

// wsConn is one live WebSocket connection. An idle one runs no goroutine of its own
// beside its reader: its frames are written by the goroutine that queues them (its
// sockWriter's flusher runs while the socket does not take them), and the ping timer's
// callback runs when it fires.
type wsConn struct {
	id, userID string
	ws         *websocket.Conn
	// conn is the socket under ws (nil if the handshake did not hand it over); only the
	// writer uses it, for its write deadline.
	conn net.Conn
	// sock is what the library writes to (nil when conn offers no raw socket: the writes
	// then wait on the socket, from a writer goroutine); set at the hijack, under mu.
	sock *sockWriter
	// drop ends the connection at once, without waiting for a close handshake.
	drop context.CancelFunc
	// max bounds the frames waiting to be written (the send queue).
	max int
	// write drains the queue; enqueue runs it when none runs (see startWriterLocked).
	write func()
	// mu guards queue, writing and ended; the queue is allocated on the first frame, so an
	// idle connection holds none.
	mu      sync.Mutex
	queue   []frame
	writing bool
	ended   bool
	// pending is set while the handshake completes: the connection is in the hub, its
	// frames queue, and no writer runs until activate attaches the socket.
	pending bool
	// busy counts the writer and ping goroutines running; they start only while the
	// connection has not ended, so after end busy.Wait waits for the last one.
	busy sync.WaitGroup
	// reason is the close reason decided by whoever closed the connection first; the
	// read loop records it (client when nobody else decided).
	reason atomic.Pointer[events.CloseReason]
	// lastRead is the unix-nano time of the last frame received.
	lastRead atomic.Int64
	// optIn is set for a connection that asked for the recovery subprotocol; stream
	// (guarded by mu) is where it stands in its user's stream.
	optIn  bool
	stream streamFollow
}

// enqueue queues f and starts the writer if none runs; it reports false when the queue is
// full or the connection ended.
func (c *wsConn) enqueue(f frame) bool {
	c.mu.Lock()
	if c.ended || len(c.queue)+c.sock.backlog() >= c.max {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, f)
	c.startWriterLocked()
	return true
}

// activate attaches the upgraded socket to a pending connection and starts writing what
// was queued meanwhile.
func (c *wsConn) activate(ws *websocket.Conn, conn net.Conn) {
	c.mu.Lock()
	c.ws, c.conn, c.pending = ws, conn, false
	c.startWriterLocked()
}

// startWriterLocked starts the writer if frames wait, none runs, and the socket is
// attached; it is called with mu held and unlocks it. With a sockWriter, whose writes
// never wait on the socket, the writer runs in the calling goroutine (the dispatcher's,
// mostly): no goroutine started and woken per frame. Without one it runs in a goroutine
// of its own.
func (c *wsConn) startWriterLocked() {
	start := len(c.queue) > 0 && !c.writing && !c.pending && !c.ended && c.stream.state != streamReplaying
	if start {
		c.writing = true
		c.busy.Add(1)
	}
	inline := c.sock != nil
	c.mu.Unlock()
	switch {
	case !start:
	case inline:
		defer c.busy.Done()
		c.write()
	default:
		go func() {
			defer c.busy.Done()
			c.write()
		}()
	}
}

// socket returns the connection's socket, nil while it is pending.
func (c *wsConn) socket() *websocket.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ws
}

// maxSpareFrames is the largest slice of frames a connection keeps, empty, for its next
// frames: a connection written to one or two frames at a time queues them without
// allocating, and an idle one keeps at most that much (80 bytes).
const maxSpareFrames = 2

// next returns the queued frames, oldest first, and empties the queue; when there are none
// the writer is done (the next frame starts another). done is the slice the writer
// finished writing: emptied, it becomes the queue when small (maxSpareFrames).
func (c *wsConn) next(done []frame) []frame {
	clear(done)
	if cap(done) > maxSpareFrames {
		done = nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	if len(q) == 0 {
		c.writing = false
		if cap(q) == 0 && done != nil {
			c.queue = done[:0]
		}
		return nil
	}
	c.queue = nil
	if done != nil {
		c.queue = done[:0]
	}
	return q
}

// running runs fn in the calling goroutine, counted in busy, unless c has ended.
func (c *wsConn) running(fn func()) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.busy.Add(1)
	c.mu.Unlock()
	defer c.busy.Done()
	fn()
}

// end marks c ended and tells every frame still queued that it was not written.
func (c *wsConn) end() {
	c.mu.Lock()
	c.ended = true
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, f := range q {
		f.written(errGone)
	}
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
