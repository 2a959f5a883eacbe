package localrt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/dashboard"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/onlineapi"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// Limits of POST /messages.
const (
	// MaxRequestBytes caps a POST /messages body.
	MaxRequestBytes = 4 << 20
	// MaxMessagesPerRequest caps the messages of one POST /messages.
	MaxMessagesPerRequest = 100
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", s.handleWebSocket)
	mux.HandleFunc("POST /{$}", s.handleSQS)
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.Handle("GET /ui/", dashboard.Handler("/ui/"))
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	mux.Handle("GET /favicon.ico", dashboard.Favicon())
	if s.cfg.Pprof {
		mux.Handle("/debug/pprof/", s.backend(pprof.Index))
		mux.Handle("/debug/pprof/profile", s.backend(pprof.Profile))
		mux.Handle("/debug/pprof/symbol", s.backend(pprof.Symbol))
		mux.Handle("/debug/pprof/trace", s.backend(pprof.Trace))
	}
	mux.Handle("/user/online", s.backend(s.handleOnline))
	mux.Handle("/user/{userId}/online", s.backend(s.handleUserStatus))
	mux.Handle("/messages", s.backend(s.handleMessages))
	mux.Handle("GET /events", s.backend(s.handleEvents))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httperr.Write(w, r, s.log, httperr.New(http.StatusNotFound, httperr.CodeNotFound, "no such endpoint"))
	})
	return mux
}

// backend guards the endpoints meant for other services: the API key, as
// "Authorization: Bearer <key>" or "X-Api-Key: <key>". A user JWT is not enough.
func (s *Server) backend(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Api-Key")
		if key == "" {
			key = auth.BearerToken(r.Header.Get("Authorization"))
		}
		if !auth.KeyMatches(s.cfg.APIKey, key) {
			s.log.Info("backend request refused", "path", r.URL.Path, "remote", r.RemoteAddr)
			s.metrics.authFailures.WithLabelValues("api_key").Inc()
			httperr.Write(w, r, s.log, httperr.New(http.StatusUnauthorized, httperr.CodeUnauthorized, "missing or wrong API key"))
			return
		}
		next(w, r)
	})
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if s.isStopping() {
		httperr.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "stopping"})
		return
	}
	if err := s.store.Health(); err != nil {
		// A store that cannot read its own rows is not served as healthy.
		httperr.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "damaged", "error": err.Error()})
		return
	}
	if err := s.store.Writable(); err != nil {
		// Probe: a store that can write again is healthy again without waiting for a write.
		if perr := s.store.ProbeWrite(r.Context()); perr != nil {
			// Reads are served; writes answer 503 until the store can write.
			httperr.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "cannot_write", "error": "the store cannot write (a full disk?): writes answer 503 until it can"})
			return
		}
	}
	httperr.WriteJSON(w, http.StatusOK, map[string]any{"status": "ok", "connections": s.hub.count()})
}

func methodNotAllowed(allow string) *httperr.Error {
	return httperr.New(http.StatusMethodNotAllowed, httperr.CodeMethod, "use "+allow)
}

// handleOnline is GET /user/online, the original service's contract.
func (s *Server) handleOnline(w http.ResponseWriter, r *http.Request) {
	if !onlineapi.MethodAllowed(r.Method) {
		w.Header().Set("Allow", "GET, HEAD")
		httperr.Write(w, r, s.log, methodNotAllowed("GET"))
		return
	}
	q, err := onlineapi.Parse(r.URL.RawQuery)
	if err != nil {
		httperr.Write(w, r, s.log, err)
		return
	}
	out, next, err := onlineapi.Answer(r.Context(), s.view, q)
	if err != nil {
		httperr.Write(w, r, s.log, err)
		return
	}
	if next != "" {
		w.Header().Set(onlineapi.NextTokenHeader, next)
	}
	httperr.WriteJSON(w, http.StatusOK, out)
}

// handleUserStatus is GET /user/{userId}/online: {"status":"online"|"offline"}, as the
// original service answered it.
func (s *Server) handleUserStatus(w http.ResponseWriter, r *http.Request) {
	if !onlineapi.MethodAllowed(r.Method) {
		w.Header().Set("Allow", "GET, HEAD")
		httperr.Write(w, r, s.log, methodNotAllowed("GET"))
		return
	}
	id, err := onlineapi.ParseUserID(r.PathValue("userId"))
	if err != nil {
		httperr.Write(w, r, s.log, err)
		return
	}
	out, err := onlineapi.AnswerUser(r.Context(), s.view, id)
	if err != nil {
		httperr.Write(w, r, s.log, err)
		return
	}
	httperr.WriteJSON(w, http.StatusOK, out)
}

// EnqueueReply is the answer of POST /messages: the id of each accepted message, in order.
type EnqueueReply struct {
	MessageIDs []string `json:"messageIds"`
}

// handleMessages is POST /messages: the local queue's SendMessage. It answers 202 only
// once every message is durable.
func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		httperr.Write(w, r, s.log, methodNotAllowed("POST"))
		return
	}
	if qc, ok := r.Context().Value(quietConnKey{}).(*quietConn); ok {
		qc.quiet.Store(true)
		defer qc.quiet.Store(false)
	}
	buf := bodyBuffers.Get().(*[]byte)
	defer putBodyBuffer(buf)
	body, err := s.takeBody(w, r, buf)
	switch {
	case errors.Is(err, errBodyOverBudget):
		httperr.Write(w, r, s.log, s.overBudget(w))
		return
	case errors.Is(err, errBodyTooLarge):
		httperr.Write(w, r, s.log, httperr.BadRequest(httperr.CodeRequestTooLarge,
			fmt.Sprintf("request body larger than %d bytes", MaxRequestBytes)))
		return
	case err != nil:
		httperr.Write(w, r, s.log, httperr.BadRequest(httperr.CodeInvalidRequest, "could not read the request body"))
		return
	}
	defer body.close()
	// The decoded messages copy what they keep: the buffer goes back to the pool.
	msgs, err := events.DecodeMessages(body.data, MaxMessagesPerRequest)
	body.decoded()
	if err != nil {
		code := httperr.CodeInvalidMessage
		if errors.Is(err, events.ErrInvalidUTF8) {
			code = httperr.CodeInvalidUTF8
		}
		httperr.Write(w, r, s.log, httperr.BadRequest(code, err.Error()))
		return
	}
	ids, err := s.enqueue(r.Context(), msgs)
	if err != nil {
		httperr.Write(w, r, s.log, s.storeUnavailable(w, err))
		return
	}
	writeEnqueueReply(w, buf, ids)
}

// quietListener hands the HTTP server its connections as quietConns.
type quietListener struct{ net.Listener }

// Accept implements net.Listener.
func (l quietListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &quietConn{Conn: c}, nil
}

// quietConn is a connection of the HTTP server. Once a request's body is read, net/http
// starts a goroutine reading one byte from the socket, to notice a client that hangs up
// while the handler runs, and ends it when the handler returns: three goroutine hand-offs
// and a read per request. While quiet is set (POST /messages, whose handler waits for its
// commit and answers whether or not its client is still there), that read finds nothing
// at once instead of waiting on the socket: net/http's own reads, into its 4 KB buffer,
// are never one byte, and a pipelined request's bytes stay in the socket for the next read.
type quietConn struct {
	net.Conn
	quiet atomic.Bool
}

// Read implements net.Conn.
func (c *quietConn) Read(p []byte) (int, error) {
	if len(p) == 1 && c.quiet.Load() {
		return 0, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes a TCP connection (net/http does before closing one it refused).
func (c *quietConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// quietConnKey is the context key of a request's quietConn.
type quietConnKey struct{}

// withQuietConn is the HTTP server's ConnContext: a request's handler finds its
// connection under quietConnKey.
func withQuietConn(ctx context.Context, c net.Conn) context.Context {
	if qc, ok := c.(*quietConn); ok {
		return context.WithValue(ctx, quietConnKey{}, qc)
	}
	return ctx
}

// bodyBuffers holds the buffers POST /messages reads bodies into; a buffer grown past
// maxPooledBody by a large body is dropped instead of kept (putBodyBuffer), so the pool
// holds at most that much per buffer, and the collector empties it.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledBody is the largest buffer bodyBuffers keeps.
const maxPooledBody = 64 << 10

func putBodyBuffer(b *[]byte) {
	if cap(*b) <= maxPooledBody {
		*b = (*b)[:0]
		bodyBuffers.Put(b)
	}
}

// readBody reads r to its end into *buf (grown as needed) and returns what it read.
func readBody(r io.Reader, buf *[]byte) ([]byte, error) {
	b := (*buf)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			*buf = b
			if err == io.EOF {
				return b, nil
			}
			return b, err
		}
	}
}

// The answer of POST /messages, written as bytes: what json.Encoder writes for an
// EnqueueReply (HTML characters escaped, a newline at the end), without its reflection.
var (
	jsonContentType = []string{"application/json"}
	noSniff         = []string{"nosniff"}
)

// writeEnqueueReply answers 202 with ids, built in buf (the request's body buffer, no
// longer needed).
func writeEnqueueReply(w http.ResponseWriter, buf *[]byte, ids []string) {
	b := append((*buf)[:0], `{"messageIds":[`...)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, id)
	}
	b = append(b, "]}\n"...)
	*buf = b
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(b)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json escapes it. The
// ids this server generates need no escape; any other string goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// overBudget is the answer to a request refused for the body budget.
func (s *Server) overBudget(w http.ResponseWriter) *httperr.Error {
	w.Header().Set("Retry-After", "1")
	return httperr.New(http.StatusServiceUnavailable, httperr.CodeUnavailable, "too many request bodies in flight; retry later")
}

// errStoreClosed is what enqueue returns once the store is closed (shutting down).
var errStoreClosed = sqlite.ErrClosed

// storeUnavailable turns an enqueue error into the client's answer: 503 with Retry-After,
// whether the server is shutting down, the store cannot write for now (a full disk) or
// the held messages are at their bound (messages_held_full); the cause is logged. Nothing
// was accepted: the client retries.
func (s *Server) storeUnavailable(w http.ResponseWriter, err error) *httperr.Error {
	w.Header().Set("Retry-After", "1")
	switch {
	case errors.Is(err, errStoreClosed):
		return httperr.New(http.StatusServiceUnavailable, httperr.CodeUnavailable, "server is shutting down")
	case errors.Is(err, sqlite.ErrDamaged):
		w.Header().Del("Retry-After")
		return httperr.New(http.StatusServiceUnavailable, httperr.CodeDamaged, "the store is damaged: nothing is accepted until it is repaired (see /healthz)")
	case errors.Is(err, errUserHeldFull):
		return httperr.New(http.StatusServiceUnavailable, httperr.CodeHeldFull,
			fmt.Sprintf("a recipient has %d messages held for its reconnect, its bound; retry later", s.cfg.MaxHeldMessagesPerUser))
	case errors.Is(err, errHeldFull):
		return httperr.New(http.StatusServiceUnavailable, httperr.CodeHeldFull,
			fmt.Sprintf("%d messages are held for recovering users' reconnects, the bound; retry later", s.cfg.MaxHeldMessages))
	case errors.Is(err, sqlite.ErrOutcomesBlocked):
		return httperr.New(http.StatusServiceUnavailable, httperr.CodeUnavailable, "the store cannot record the outcomes of delivered messages; retry later")
	}
	// The store logs when it stops and starts writing again, not every refused request.
	s.log.Debug("store write failed", "err", err)
	return httperr.New(http.StatusServiceUnavailable, httperr.CodeUnavailable, "the store cannot write for now; retry later")
}

// newMessageID returns a time-ordered UUID (version 7): the ids of a burst of messages sit
// together in the queue's (MessageId, UserId) index instead of one page apart each, so a
// group commit writes a few index pages, not one per message.
func newMessageID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString() // the clock or the random source failed: a random one
	}
	return id.String()
}

// enqueue makes msgs durable, one queue entry per recipient, and returns each message's
// id (generated when absent). It is the one way into the local queue: POST /messages and
// the SQS protocol both use it.
func (s *Server) enqueue(ctx context.Context, msgs []events.Message) ([]string, error) {
	if s.held.full(s.cfg.MaxHeldMessages) {
		return nil, errHeldFull
	}
	now := s.now()
	ids := make([]string, len(msgs))
	queued := make([]sqlite.QueuedMessage, 0, len(msgs))
	for i, m := range msgs {
		id := m.MessageID
		if id == "" {
			id = newMessageID()
		}
		tasks := delivery.Plan(m, id)
		ids[i] = tasks[0].MessageID
		for _, d := range tasks {
			queued = append(queued, sqlite.QueuedMessage{MessageID: d.MessageID, UserID: d.UserID, Body: d.Body, EnqueuedAt: now})
		}
	}
	if s.held.userFull(queued, s.cfg.MaxHeldMessagesPerUser) {
		return nil, errUserHeldFull
	}
	weight := storeWeight(queued)
	if err := s.storeBytes.Acquire(ctx, weight); err != nil {
		return nil, fmt.Errorf("enqueue: wait for the store: %w", err)
	}
	s.metrics.storeQueued.Add(float64(weight))
	err := s.queue.Enqueue(ctx, queued...)
	s.metrics.storeQueued.Sub(float64(weight))
	s.storeBytes.Release(weight)
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	s.accepted.Add(int64(len(queued)))
	return ids, nil
}

// handleEvents is GET /events: the published events as Server-Sent Events, each data line
// an EventBridge envelope, each id the store's epoch and the outbox sequence number
// ("EPOCH:SEQ"). A client resumes with the Last-Event-ID header (or ?after=ID; a bare
// sequence number is read in the current epoch, and ?after=0 replays everything kept);
// without either the stream starts at the present. An id of another epoch, or past the
// newest event, names a history the store no longer holds (a restore): 410
// events_epoch_changed, never a silent stream of other events under the same ids.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		httperr.Write(w, r, s.log, errors.New("response writer cannot flush"))
		return
	}
	ctx := r.Context()
	epoch := s.outbox.Epoch()
	cursorText := r.Header.Get("Last-Event-ID")
	if cursorText == "" {
		cursorText = r.URL.Query().Get("after")
	}
	var cursor int64
	if cursorText != "" {
		idEpoch, n, err := parseEventID(cursorText)
		if err != nil {
			httperr.Write(w, r, s.log, httperr.BadRequest(httperr.CodeInvalidRequest, "Last-Event-ID / after must be an event id (EPOCH:SEQ) or a non-negative integer"))
			return
		}
		cursor = n
		oldest, newest, err := s.outbox.PublishedRange(ctx)
		if err != nil {
			httperr.Write(w, r, s.log, err)
			return
		}
		if (idEpoch != "" && idEpoch != epoch) || cursor > newest {
			httperr.Write(w, r, s.log, httperr.New(http.StatusGone, httperr.CodeEpochChanged, fmt.Sprintf(
				"the event id %s is not of this store's history (epoch %s, newest event %d): the store was restored or replaced; reload your state, then read from the head without Last-Event-ID",
				cursorText, epoch, newest)))
			return
		}
		if cursor+1 < oldest {
			httperr.Write(w, r, s.log, httperr.New(http.StatusGone, httperr.CodeGone, fmt.Sprintf(
				"the events after %d are no longer kept (the outbox keeps %s; the oldest kept is %d): reload your state, then read from the head without Last-Event-ID",
				cursor, s.cfg.OutboxRetention, oldest)))
			return
		}
	} else {
		head, err := s.outbox.LastPublishedSeq(ctx)
		if err != nil {
			httperr.Write(w, r, s.log, err)
			return
		}
		cursor = head
	}
	// A damaged outbox row is never streamed: an outbox found damaged answers 503 (a row
	// met later ends the stream, logged with its position by the store). Damage elsewhere
	// (a log or queue row) does not stop the events, whose rows are checked as read.
	if err := s.store.OutboxHealth(); err != nil {
		httperr.Write(w, r, s.log, httperr.New(http.StatusServiceUnavailable, httperr.CodeDamaged, "the store is damaged: events are not served until it is repaired (see /healthz)"))
		return
	}
	if _, err := s.outbox.PublishedSince(ctx, cursor, 500); errors.Is(err, sqlite.ErrDamaged) {
		httperr.Write(w, r, s.log, httperr.New(http.StatusServiceUnavailable, httperr.CodeDamaged, "the store is damaged: events are not served until it is repaired (see /healthz)"))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": wspresence events\n\n")
	flusher.Flush()
	keepAlive := time.NewTicker(s.cfg.EventsHeartbeat)
	defer keepAlive.Stop()
	for {
		wait := s.bus.wait() // taken before reading, so no notification is missed
		recs, err := s.outbox.PublishedSince(ctx, cursor, 500)
		if err != nil {
			if ctx.Err() == nil && !s.isStopping() {
				s.log.Error("read outbox", "err", err)
			}
			return
		}
		for _, rec := range recs {
			fmt.Fprintf(w, "id: %s:%d\nevent: %s\ndata: %s\n\n", epoch, rec.Seq, rec.DetailType, rec.Envelope)
			cursor = rec.Seq
		}
		if len(recs) > 0 {
			flusher.Flush()
		}
		if len(recs) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		case <-wait:
		case <-keepAlive.C:
			fmt.Fprint(w, ": keep-alive\n\n")
			flusher.Flush()
		}
	}
}

// parseEventID reads an /events position: "EPOCH:SEQ" as the stream writes it, or a bare
// SEQ (epoch "").
func parseEventID(text string) (epoch string, seq int64, err error) {
	epoch, num, found := strings.Cut(text, ":")
	if !found {
		epoch, num = "", text
	} else if epoch == "" {
		return "", 0, errors.New("empty epoch")
	}
	seq, err = strconv.ParseInt(num, 10, 64)
	if err != nil || seq < 0 {
		return "", 0, errors.New("not a position")
	}
	return epoch, seq, nil
}
