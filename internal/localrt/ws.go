package localrt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/store/sqlite"
	"golang.org/x/time/rate"
)

const websocketGoingAway = websocket.StatusGoingAway

// maxFrameBytes caps a client frame (API Gateway's 128 KB frame limit).
const maxFrameBytes = events.MaxBodyBytes

// newConnectionID returns a random id in the style of API Gateway's (12 bytes, base64).
func newConnectionID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// userToken returns the token of a connection request: the Authorization query parameter
// (the original service's contract) or the Authorization header.
func userToken(r *http.Request) string {
	if v := r.URL.Query().Get("Authorization"); v != "" {
		return auth.BearerToken(v)
	}
	return auth.BearerToken(r.Header.Get("Authorization"))
}

// handleWebSocket is $connect, the connection's life, and $disconnect.
func (s *Server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		httperr.Write(w, r, s.log, httperr.New(http.StatusUpgradeRequired, httperr.CodeInvalidRequest,
			"this endpoint takes WebSocket connections: ws://HOST/?Authorization=<JWT>"))
		return
	}
	optIn := recovery.Requested(strings.Join(r.Header.Values("Sec-WebSocket-Protocol"), ","))
	userID, err := s.verifier.Verify(userToken(r))
	if err != nil {
		reason := auth.ReasonOf(err)
		s.log.Info("connection refused", "reason", string(reason), "remote", r.RemoteAddr)
		s.metrics.authFailures.WithLabelValues(string(reason)).Inc()
		if optIn {
			code := websocket.StatusCode(recovery.CloseTokenRefused)
			if reason == auth.ReasonExpired {
				code = recovery.CloseTokenExpired
			}
			s.refuseOptedIn(w, r, code, "token refused: "+string(reason))
			return
		}
		httperr.Write(w, r, s.log, httperr.New(http.StatusUnauthorized, httperr.CodeUnauthorized, "token refused: "+string(reason)))
		return
	}
	if err := s.hub.reserve(userID); err != nil {
		if errors.Is(err, errClosing) {
			if optIn {
				s.refuseOptedIn(w, r, recovery.CloseUnavailable, "unavailable")
				return
			}
			httperr.Write(w, r, s.log, httperr.New(http.StatusServiceUnavailable, httperr.CodeUnavailable, "server is shutting down"))
			return
		}
		s.log.Info("connection refused", "reason", "connection_cap", "userId", userID)
		s.metrics.authFailures.WithLabelValues("connection_cap").Inc()
		if optIn {
			s.refuseOptedIn(w, r, recovery.CloseTooManyConnections, "too many connections")
			return
		}
		httperr.Write(w, r, s.log, httperr.New(http.StatusTooManyRequests, httperr.CodeTooMany, "too many connections for this user"))
		return
	}
	// Tracked before the upgrade so Shutdown waits for this connection's close event.
	s.conns.Add(1)
	handedOver := false
	defer func() {
		if !handedOver {
			s.hub.release(userID)
			s.conns.Done()
		}
	}()

	id := newConnectionID()
	ctx := context.WithoutCancel(r.Context())
	readCtx, cancelRead := context.WithCancel(ctx)
	c := &wsConn{id: id, userID: userID, drop: cancelRead, max: s.cfg.SendQueue, pending: true, optIn: optIn}
	c.write = func() { s.writeQueued(c) }
	// The open is appended once the library has accepted the handshake and before the 101
	// leaves, and the connection joins the hub then, pending (its frames queue until the
	// socket is attached): a message accepted after the upgrade reaches it
	// (read-your-connect). A handshake the library refuses leaves nothing in the log.
	sw := &switching{smallBuffers: smallBuffers{w}, c: c, writeTimeout: s.cfg.WriteTimeout, open: func() error {
		if optIn {
			// Recorded first: a restart holds the messages of a user whose opted-in
			// connections died with the process.
			if err := s.streams.MarkRecovering(ctx, id, userID, true); err != nil {
				return err
			}
		}
		if _, err := s.events.Append(ctx, events.Opened(userID, id, s.now(), sourceIP(r), r.UserAgent())); err != nil {
			return err
		}
		s.hub.add(c)
		return nil
	}, refuse: func(err error) *httperr.Error { return s.storeUnavailable(w, err) }, upgradeAnyway: optIn}
	ws, err := websocket.Accept(sw, r, s.acceptOptions())
	switch {
	case sw.err != nil:
		cancelRead()
		s.log.Warn("connection refused: the store cannot write", "userId", userID, "err", sw.err)
		if ws != nil {
			if optIn {
				_ = ws.Close(recovery.CloseUnavailable, "unavailable")
			} else {
				ws.CloseNow()
			}
		}
		return
	case err != nil:
		cancelRead()
		s.log.Info("upgrade failed", "userId", userID, "connectionId", id, "err", err)
		if sw.opened {
			s.hub.remove(c)
			c.end() // frames queued meanwhile are reported gone
			s.appendClose(ctx, events.Closed(userID, id, s.now(), events.ReasonClient))
		}
		return
	}
	// The connection lives on in a goroutine of its own: the handler returns, so net/http
	// lets go of the request and its buffers (only the hijacked socket lives on).
	ws.SetReadLimit(maxFrameBytes)
	c.lastRead.Store(s.now().UnixNano())
	c.activate(ws, sw.hijacked)
	handedOver = true
	go func() {
		defer s.conns.Done()
		defer s.hub.release(userID)
		defer cancelRead()
		s.serveConnection(ctx, readCtx, c)
	}()
}

// acceptOptions are the WebSocket handshake's: the allowed origins, and the recovery
// subprotocol selected for a client that asks for it.
func (s *Server) acceptOptions() *websocket.AcceptOptions {
	return &websocket.AcceptOptions{OriginPatterns: s.cfg.AllowedOrigins, Subprotocols: []string{recovery.Subprotocol},
		InsecureSkipVerify: len(s.cfg.AllowedOrigins) == 1 && s.cfg.AllowedOrigins[0] == "*"}
}

// refuseOptedIn refuses a client that asked for the recovery subprotocol: upgraded, then
// closed at once with code (a browser cannot read an HTTP status). Nothing is recorded.
func (s *Server) refuseOptedIn(w http.ResponseWriter, r *http.Request, code websocket.StatusCode, reason string) {
	ws, err := websocket.Accept(smallBuffers{w}, r, s.acceptOptions())
	if err != nil {
		return
	}
	_ = ws.Close(code, reason)
}

// serveConnection is the life of an upgraded connection (in the hub already) and its
// $disconnect.
func (s *Server) serveConnection(ctx, readCtx context.Context, c *wsConn) {
	ws, userID, id := c.ws, c.userID, c.id
	if s.isStopping() {
		c.setReason(events.ReasonShutdown)
		go ws.Close(websocketGoingAway, "server shutting down")
	}
	// One line per connect and per close, at debug: the counts are metrics
	// (wspresence_connections, wspresence_events_appended_total).
	s.log.Debug("connected", "userId", userID, "connectionId", id)

	pings := s.pingEvery(ctx, c)
	s.readLoop(ctx, readCtx, c)
	pings.Stop()
	if c.optIn {
		s.held.optedInClosed(userID, s.now())
	}
	s.hub.remove(c)
	c.end() // frames never written are reported gone, never delivered
	c.sock.close()
	ws.CloseNow()
	c.busy.Wait() // the writer and a ping in flight see the socket closed and return
	c.sock.stop() // frames still on their way to the socket are reported gone
	reason := c.closeReason()
	s.appendClose(ctx, events.Closed(userID, id, s.now(), reason))
	// At shutdown the record stays: the next start holds the user's messages for its
	// reconnect.
	if c.optIn && reason != events.ReasonShutdown {
		if err := s.streams.MarkRecovering(ctx, id, userID, false); err != nil && !errors.Is(err, sqlite.ErrClosed) {
			s.log.Error("forget the recovering connection", "userId", userID, "connectionId", id, "err", err)
		}
	}
	s.log.Debug("disconnected", "userId", userID, "connectionId", id, "reason", string(reason))
}

// The sizes of a WebSocket connection's read and write buffers. Client frames are small
// (pings, activity); a larger frame is read, or written, past the buffer.
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 1024
)

// switching runs open when the library switches protocols (WriteHeader(101)), before the
// status is written; if open fails, the client gets refused (503 with Retry-After, the
// error of refuse) instead.
type switching struct {
	smallBuffers
	open   func() error
	refuse func(error) *httperr.Error
	// upgradeAnyway lets the 101 go when open fails (a client that opted in to recovery
	// is told with a close code instead of an HTTP status).
	upgradeAnyway bool
	opened        bool
	err           error
	// hijacked is the socket the library took over (the writer bounds its writes with
	// the socket's write deadline).
	hijacked net.Conn
	// c is the connection being opened: the library writes to its sockWriter, made at
	// the hijack, whose flusher bounds each write with writeTimeout.
	c            *wsConn
	writeTimeout time.Duration
}

// Hijack implements http.Hijacker, keeping the socket.
func (w *switching) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := w.smallBuffers.Hijack()
	w.hijacked = conn
	if err == nil && w.c != nil {
		if sock := newSockWriter(conn, w.writeTimeout, failExpired(w.c)); sock != nil {
			brw.Writer.Reset(sock)
			w.c.mu.Lock()
			w.c.sock = sock
			w.c.mu.Unlock()
		}
	}
	return conn, brw, err
}

// WriteHeader implements http.ResponseWriter.
func (w *switching) WriteHeader(code int) {
	if code == http.StatusSwitchingProtocols {
		if w.err = w.open(); w.err != nil && !w.upgradeAnyway {
			h := w.Header()
			for _, k := range []string{"Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"} {
				h.Del(k)
			}
			// The library hijacks the socket next: the whole answer goes out with the
			// status, its length stated.
			e := w.refuse(w.err)
			body, _ := json.Marshal(e)
			h.Set("Connection", "close")
			h.Set("Content-Type", "application/json")
			h.Set("Content-Length", strconv.Itoa(len(body)))
			w.smallBuffers.WriteHeader(e.Status)
			_, _ = w.smallBuffers.Write(body)
			return
		}
		w.opened = w.err == nil
	}
	w.smallBuffers.WriteHeader(code)
}

// smallBuffers hands the WebSocket library, at the hijack, a reader and a writer of
// wsReadBuffer and wsWriteBuffer bytes over the socket instead of the HTTP server's 4 KB
// pair, which net/http drops with the request once the handler returns.
type smallBuffers struct{ http.ResponseWriter }

// Hijack takes the socket over from net/http; bytes the client sent past the handshake
// are kept in front of it.
func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	rd := bufio.NewReaderSize(conn, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// The library re-reads what the reader holds buffered, then the socket: the early
		// bytes go into the new reader's buffer.
		early, _ := brw.Reader.Peek(n)
		rd = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn), max(wsReadBuffer, n))
		if _, err := rd.Peek(n); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("keep the bytes sent with the handshake: %w", err)
		}
	}
	return conn, bufio.NewReadWriter(rd, bufio.NewWriterSize(conn, wsWriteBuffer)), nil
}

// readLoop reads client frames until the connection ends (or readCtx is cancelled, which
// drops it). Every frame is activity; a frame that is not JSON, or an action we do not
// know, is otherwise ignored.
func (s *Server) readLoop(ctx, readCtx context.Context, c *wsConn) {
	var lastRecorded time.Time
	limiter := rate.NewLimiter(rate.Limit(s.cfg.InboundRate), s.cfg.InboundBurst)
	for {
		_, data, err := c.ws.Read(readCtx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				s.log.Info("frame too large", "userId", c.userID, "connectionId", c.id)
			}
			return
		}
		now := s.now()
		c.lastRead.Store(now.UnixNano())
		if !limiter.AllowN(now, 1) {
			s.log.Info("inbound rate limit exceeded", "userId", c.userID, "connectionId", c.id)
			c.setReason(events.ReasonExpired)
			_ = c.ws.Close(websocket.StatusPolicyViolation, "rate limit exceeded")
			return
		}
		// Every frame is activity; the action only names it.
		if c.optIn && ParseClientFrame(data).Action == actionRecover {
			s.handleRecover(ctx, c, data)
		}
		if now.Sub(lastRecorded) >= s.cfg.ActivityInterval {
			lastRecorded = now
			if _, err := s.events.Append(ctx, events.Activity(c.userID, c.id, now)); err != nil {
				s.log.Error("record activity", "connectionId", c.id, "err", err)
			}
		}
	}
}

// writeQueued writes the queued frames, oldest first, until the queue is empty, and
// returns: the next frame starts a writer again. With a sockWriter it runs in the
// goroutine that queued the frame, and each frame is reported written once on the socket
// (sockWriter.after). A failed or too slow write ends the
// connection as expired; the frames it leaves unwritten are reported gone.
func (s *Server) writeQueued(c *wsConn) {
	if c.sock == nil {
		defer c.clearWriteDeadline()
	}
	var q []frame
	for {
		q = c.next(q)
		if len(q) == 0 {
			return
		}
		for i, f := range q {
			err := c.writeText(s.cfg.WriteTimeout, f.data)
			if err == nil {
				if c.sock != nil {
					c.sock.after(f)
				} else {
					f.written(nil)
				}
				continue
			}
			f.written(fmt.Errorf("write: %w: %w", err, delivery.ErrConnectionGone))
			for _, rest := range q[i+1:] {
				rest.written(errGone)
			}
			c.setReason(events.ReasonExpired)
			if c.sock != nil {
				// Written from the dispatcher: CloseNow waits for a close handshake
				// another goroutine may have begun (seconds), which must not hold it.
				go c.ws.CloseNow()
			} else {
				c.ws.CloseNow()
			}
			c.end()
			return
		}
	}
}

// writeText writes data as one text frame, within timeout. The bound is the socket's
// write deadline, not a context: a context with a deadline costs the library a callback
// registration (and this writer a timer) per frame. Only the writer sets the deadline,
// and it clears it when the queue is empty (clearWriteDeadline), so the pings and closes
// written between its runs are not cut short by a deadline that has passed.
func (c *wsConn) writeText(timeout time.Duration, data []byte) error {
	if c.sock != nil {
		// The sockWriter does not wait on the socket; its flusher bounds its writes.
		return c.ws.Write(context.Background(), websocket.MessageText, data)
	}
	if c.conn == nil {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return c.ws.Write(ctx, websocket.MessageText, data)
	}
	if err := c.conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	return c.ws.Write(context.Background(), websocket.MessageText, data)
}

// clearWriteDeadline lifts the deadline writeText set.
func (c *wsConn) clearWriteDeadline() {
	if c.conn != nil {
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
}

// pingEvery pings c every PingInterval from a timer (no goroutine while it waits),
// closing it as expired when a ping goes unanswered within the interval or the client has
// been silent for IdleTimeout. Stop the returned timer when the connection ends.
func (s *Server) pingEvery(ctx context.Context, c *wsConn) *time.Timer {
	var t *time.Timer
	t = time.AfterFunc(s.cfg.PingInterval, func() {
		c.running(func() {
			if idle := s.now().Sub(time.Unix(0, c.lastRead.Load())); idle >= s.cfg.IdleTimeout {
				c.setReason(events.ReasonExpired)
				_ = c.ws.Close(websocket.StatusPolicyViolation, "idle timeout")
				return
			}
			pctx, cancel := context.WithTimeout(ctx, s.cfg.PingInterval)
			err := c.ws.Ping(pctx)
			cancel()
			if err != nil {
				c.setReason(events.ReasonExpired)
				c.ws.CloseNow()
				return
			}
			t.Reset(s.cfg.PingInterval)
		})
	})
	return t
}

// ClientFrame is what a client frame says: {"action":"ping"} and the like.
type ClientFrame struct {
	// Action is the string value of the frame's "action" member (the exact name, last one
	// if repeated), exactly as sent. It is empty when the frame is not a JSON object of
	// valid UTF-8 or its action is not a string.
	Action string
}

// ParseClientFrame reads a client frame; it never fails, whatever the bytes.
func ParseClientFrame(data []byte) ClientFrame {
	if events.CheckJSONText(data) != nil {
		return ClientFrame{}
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(data, &members) != nil {
		return ClientFrame{}
	}
	var action string
	if json.Unmarshal(members["action"], &action) != nil {
		return ClientFrame{}
	}
	return ClientFrame{Action: action}
}

func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
