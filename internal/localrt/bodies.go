package localrt

import (
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// bodyDecodes bounds the request bodies (POST /messages, the queue) decoded at once: one
// per CPU the runtime uses; the others wait for a turn, holding their share of the body
// budget. Decoding a large body is the CPU-heavy part of a request: bounded, it leaves
// the CPU to /healthz, connects and the other requests. Refusals never wait for a turn.
func bodyDecodes() int { return max(1, runtime.GOMAXPROCS(0)) }

// storeQueueBytes bounds the bytes of accepted messages handed to the store and not yet
// committed (1 MiB; a larger request takes it whole): the bodies past it wait for their
// turn in memory, holding their share of the body budget, instead of in the writer's
// queue, where a WebSocket connect's record would wait behind them. A connect then waits
// for at most this much of the messages before it (or one larger request), whatever the
// budget holds. Small messages, thousands to the MiB, are not held back by it.
const storeQueueBytes = 1 << 20

// storeWeight is what msgs take of storeQueueBytes: the bytes of their bodies, at most all
// of it (one request always fits).
func storeWeight(msgs []sqlite.QueuedMessage) int64 {
	var n int64
	for _, m := range msgs {
		n += int64(len(m.Body))
	}
	return min(max(n, 1), storeQueueBytes)
}

// Why a request body was not read.
var (
	// errBodyTooLarge: the body is larger than MaxRequestBytes (its Content-Length says so,
	// or it grew past it as it was read).
	errBodyTooLarge = errors.New("request body too large")
	// errBodyOverBudget: the body does not fit in what is left of the body budget.
	errBodyOverBudget = errors.New("request body over the body budget")
	// errBodyRead: the body could not be read (the client went away, a timeout).
	errBodyRead = errors.New("request body could not be read")
)

// requestBody is a request body read within the body budget (see Server.takeBody).
type requestBody struct {
	data     []byte
	s        *Server
	reserved int64
	turn     bool
}

// decoded gives back the read turn: call it once the body is decoded, before the slower
// work (the store's commit) that follows.
func (b *requestBody) decoded() {
	if b.turn {
		b.turn = false
		<-b.s.bodyReads
	}
}

// close gives back the turn and the body's share of the budget.
func (b *requestBody) close() {
	b.decoded()
	b.s.bodies.Add(-b.reserved)
	b.reserved = 0
}

// reserve takes n bytes from the body budget; false (nothing taken) when they do not fit.
func (b *requestBody) reserve(n int64) bool {
	if b.s.bodies.Add(n) > b.s.cfg.BodyBudget {
		b.s.bodies.Add(-n)
		return false
	}
	b.reserved += n
	return true
}

// takeBody reads r's body within the body budget, into *buf if buf is not nil (see
// readBody). What can be refused without reading is refused at once, before any byte of
// the body is read and without waiting for anything the other requests hold: a
// Content-Length over MaxRequestBytes (errBodyTooLarge), or over what is left of the
// budget (errBodyOverBudget). A body without a length takes its share of the budget as it
// streams in, and is refused once it does not fit. The body of a refused request is left
// unread and its connection closed after the answer (closeAfterAnswer), so its client
// stops sending. At most bodyDecodes() bodies are decoded at once. The caller closes the
// body once done (and calls decoded once it no longer needs the turn).
func (s *Server) takeBody(w http.ResponseWriter, r *http.Request, buf *[]byte) (*requestBody, error) {
	b := &requestBody{s: s}
	refuse := func(err error) (*requestBody, error) {
		b.close()
		closeAfterAnswer(w, r)
		if errors.Is(err, errBodyOverBudget) {
			s.metrics.authFailures.WithLabelValues("body_budget").Inc()
		}
		return nil, err
	}
	if r.ContentLength > MaxRequestBytes {
		return refuse(errBodyTooLarge)
	}
	if r.ContentLength >= 0 && !b.reserve(r.ContentLength) {
		return refuse(errBodyOverBudget)
	}
	// A body with a Content-Length (at most MaxRequestBytes, checked above) ends there:
	// net/http reads no further. Only one without a length is bounded as it streams.
	var limited io.Reader = r.Body
	if r.ContentLength < 0 {
		limited = http.MaxBytesReader(w, io.NopCloser(&budgetReader{r: r.Body, b: b}), MaxRequestBytes)
	}
	var data []byte
	var err error
	if buf != nil {
		data, err = readBody(limited, buf)
	} else {
		data, err = io.ReadAll(limited)
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return refuse(errBodyTooLarge)
		case errors.Is(err, errBodyOverBudget):
			return refuse(errBodyOverBudget)
		}
		return refuse(errBodyRead)
	}
	b.data = data
	// A turn to decode: the CPU-heavy part, taken once the body is in (a client slow to
	// send it holds no turn).
	select {
	case s.bodyReads <- struct{}{}:
		b.turn = true
	case <-r.Context().Done():
		return refuse(errBodyRead)
	}
	return b, nil
}

// budgetReader takes each chunk of a body without a length from the budget as it is read.
type budgetReader struct {
	r io.Reader
	b *requestBody
}

func (br *budgetReader) Read(p []byte) (int, error) {
	n, err := br.r.Read(p)
	if n > 0 && !br.b.reserve(int64(n)) {
		return 0, errBodyOverBudget
	}
	return n, err
}

// closeAfterAnswer has net/http close r's connection once the answer is written, without
// reading what is left of its body: the answer and a FIN first, then a pause before the
// close, so the client reads the answer before a reset (net/http's handling of a body over
// its limit). Left alone, net/http would read up to 256 KB of the body first, or, for a
// client that asked to close, reset the connection at once (its unread body still coming
// in), and the client would lose the answer. A client waiting for "100 Continue" has sent
// no body: its connection closes cleanly as it is.
func closeAfterAnswer(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 || strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		return
	}
	// net/http marks the body over its limit when a read passes it: a limit of 0 and one
	// byte (already there from a client sending its body; a client sending nothing is
	// waited for 100 ms at most).
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = http.MaxBytesReader(w, r.Body, 0).Read(make([]byte, 1))
}
