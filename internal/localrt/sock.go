package localrt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
)

// sockWriter is what a connection's WebSocket library writes to: it never waits on the
// socket. A write goes to the socket at once as far as the socket takes it (one
// non-blocking write); what the socket does not take waits in spill, written, in order,
// by a goroutine of its own (the flusher) that waits on the socket, each of its writes
// bounded by the write timeout. A connection's frames are thus written from the goroutine
// that dispatches them, without a hand-off to a writer goroutine, and a client slow to
// read holds no one but its flusher. A frame is reported written (after) only once all
// its bytes are on the socket: at once, or when the flusher has written past its end.
type sockWriter struct {
	conn    net.Conn
	raw     syscall.RawConn
	timeout time.Duration
	// fail ends the connection (as expired) when a flusher's write fails or times out.
	fail func()

	mu sync.Mutex
	// spill holds the bytes accepted and not yet on the socket, oldest first, dropped
	// once the flusher is done; the frames waiting for them are in waiting (their count
	// bounded by the send queue's length, see wsConn.enqueue), each removed once written
	// or the socket failed.
	spill    []byte
	waiting  []sentFrame
	accepted int64 // bytes accepted since the connection began
	sent     int64 // of those, bytes on the socket
	flushing bool
	err      error
	closed   bool
	flusher  sync.WaitGroup
	// now is the write under way in tryWrite (under mu), writeNow its raw write.
	now      nowWrite
	writeNow func(fd uintptr) bool
}

// sentFrame is a frame whose receipt waits for the socket to have taken end bytes: f's,
// or, for a writer waiting (sent), a send on ch.
type sentFrame struct {
	end int64
	f   frame
	ch  chan error
}

// newSockWriter returns conn's sockWriter, or nil if conn offers no raw access to its
// socket (its writes then wait on the socket as before).
func newSockWriter(conn net.Conn, timeout time.Duration, fail func()) *sockWriter {
	if qc, ok := conn.(*quietConn); ok {
		conn = qc.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &sockWriter{conn: conn, raw: raw, timeout: timeout, fail: fail}
	w.writeNow = w.writeNowOn
	return w
}

// errSockClosed is what a write answers once the connection ended.
var errSockClosed = fmt.Errorf("connection ended: %w", net.ErrClosed)

// Write implements io.Writer: p is accepted whole (unless the socket failed), on the
// socket or in spill.
func (w *sockWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return 0, w.err
	case w.closed:
		return 0, errSockClosed
	}
	n := len(p)
	w.accepted += int64(n)
	if !w.flushing { // else the flusher holds the socket, and bytes before p
		k, err := w.tryWrite(p)
		w.sent += int64(k)
		if err != nil {
			w.err = err
			return k, err
		}
		p = p[k:]
	}
	if len(p) > 0 {
		w.spill = append(w.spill, p...)
		if !w.flushing {
			w.flushing = true
			w.flusher.Add(1)
			go w.flush()
		}
	}
	return n, nil
}

// tryWrite writes what the socket takes of p now, without waiting. It is called with mu
// held: the raw write's function (writeNow, bound once) reads p and leaves its results in
// the writer, so that a write allocates nothing.
func (w *sockWriter) tryWrite(p []byte) (int, error) {
	w.now = nowWrite{p: p}
	err := w.raw.Write(w.writeNow)
	n, werr := w.now.n, w.now.err
	w.now = nowWrite{}
	if werr == nil {
		werr = err
	}
	return n, werr
}

// nowWrite is one tryWrite's bytes and results.
type nowWrite struct {
	p   []byte
	n   int
	err error
}

// writeNowOn is the raw write of w.now.p on the socket fd: as much as it takes, without
// waiting (it reports done whatever happened).
func (w *sockWriter) writeNowOn(fd uintptr) bool {
	for len(w.now.p) > 0 {
		k, err := syscall.Write(int(fd), w.now.p)
		if k > 0 {
			w.now.n += k
			w.now.p = w.now.p[k:]
		}
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			return true
		case err != nil:
			w.now.err = err
			return true
		case k <= 0:
			w.now.err = errors.New("socket write wrote nothing")
			return true
		}
	}
	return true
}

// flush writes spill until it is empty, waiting on the socket, and reports the frames
// written as it goes; a write that fails or outlasts the timeout ends the connection,
// its waiting frames reported gone.
func (w *sockWriter) flush() {
	defer w.flusher.Done()
	var buf []byte
	for {
		w.mu.Lock()
		if len(w.spill) == 0 || w.err != nil {
			// The deadline is lifted before a write may go straight to the socket again:
			// a deadline past would fail it.
			_ = w.conn.SetWriteDeadline(time.Time{})
			w.flushing = false
			w.spill = nil // its buffers go with the flusher: an idle connection keeps none
			if len(w.waiting) == 0 {
				w.waiting = nil
			}
			w.mu.Unlock()
			return
		}
		buf, w.spill = w.spill, buf[:0]
		w.mu.Unlock()
		err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
		n := 0
		if err == nil {
			n, err = w.conn.Write(buf)
		}
		w.mu.Lock()
		w.sent += int64(n)
		if err != nil {
			w.err = err
			w.spill = nil
		}
		done, closing := w.doneLocked(), w.closed
		w.mu.Unlock()
		for _, d := range done {
			d.report()
		}
		if err != nil {
			if !closing && w.fail != nil {
				w.fail()
			}
			return
		}
	}
}

// reported is a frame's receipt, to call (report) once no lock is held.
type reported struct {
	f   frame
	ch  chan error
	err error
}

func (r reported) report() {
	if r.ch != nil {
		r.ch <- r.err
		return
	}
	r.f.written(r.err)
}

// doneLocked removes from waiting the frames written (all of them, gone, once the
// socket failed) and returns them.
func (w *sockWriter) doneLocked() []reported {
	var out []reported
	i := 0
	for ; i < len(w.waiting) && (w.waiting[i].end <= w.sent || w.err != nil); i++ {
		r := reported{f: w.waiting[i].f, ch: w.waiting[i].ch}
		if w.waiting[i].end > w.sent {
			r.err = fmt.Errorf("write: %w: %w", w.err, delivery.ErrConnectionGone)
		}
		out = append(out, r)
	}
	rest := copy(w.waiting, w.waiting[i:])
	clear(w.waiting[rest:])
	w.waiting = w.waiting[:rest]
	return out
}

// after reports f, whose bytes the library has just handed over, written once all of
// them are on the socket: now, or when the flusher has written them.
func (w *sockWriter) after(f frame) {
	w.mu.Lock()
	switch {
	case w.sent >= w.accepted:
		w.mu.Unlock()
		f.written(nil)
	case w.err != nil:
		err := w.err
		w.mu.Unlock()
		f.written(fmt.Errorf("write: %w: %w", err, delivery.ErrConnectionGone))
	default:
		// Its receipt needs no bytes: those not on the socket are in spill already, and
		// the body shared with the user's other connections is let go here.
		f.data = nil
		w.waiting = append(w.waiting, sentFrame{end: w.accepted, f: f})
		w.mu.Unlock()
	}
}

// waitSent waits until every byte accepted so far is on the socket, or ctx ends; nil w
// has nothing to wait for.
func (w *sockWriter) waitSent(ctx context.Context) error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	switch {
	case w.sent >= w.accepted:
		w.mu.Unlock()
		return nil
	case w.err != nil:
		err := w.err
		w.mu.Unlock()
		return err
	}
	ch := make(chan error, 1) // the flusher reports once, whether or not we still wait
	w.waiting = append(w.waiting, sentFrame{end: w.accepted, ch: ch})
	w.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backlog is how many frames wait for the flusher.
func (w *sockWriter) backlog() int {
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting)
}

// close marks the connection ending (before its socket is closed): a flusher's write
// failing from now on is the close, not a reason to close.
func (w *sockWriter) close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// stop ends the writer once the connection ended (close, then its socket closed): it
// waits for the flusher, and reports the frames still waiting gone.
func (w *sockWriter) stop() {
	if w == nil {
		return
	}
	w.close()
	w.flusher.Wait()
	w.mu.Lock()
	if w.err == nil {
		w.err = errSockClosed
	}
	w.spill = nil
	done := w.doneLocked()
	w.mu.Unlock()
	for _, d := range done {
		d.report()
	}
}

// failExpired is a sockWriter's fail for c: the connection ends as expired.
func failExpired(c *wsConn) func() {
	return func() {
		c.setReason(events.ReasonExpired)
		if ws := c.socket(); ws != nil {
			ws.CloseNow()
		}
	}
}
