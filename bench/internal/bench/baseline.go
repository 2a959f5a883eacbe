package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Baseline is the raw-transport server: connections by user, frames pushed as they come.
// A durable baseline (BaselineOptions.Log set) first appends each request's body to a log
// and syncs it, in group commits, and answers and pushes only then.
type Baseline struct {
	mu    sync.Mutex
	conns map[string]map[*websocket.Conn]bool
	log   *GroupLog
}

// BaselineOptions shape the baseline.
type BaselineOptions struct {
	// Log, if set, makes the baseline durable: each POST /push body is appended to this
	// file and synced before the 202, in group commits (see GroupLog).
	Log string
	// Hold is how long a durable baseline holds each group commit open for more requests
	// after its first (0: it commits at once whatever arrived while the previous one synced).
	Hold time.Duration
}

// ServeBaseline serves the baseline on ln until ctx ends. Endpoints: "/" WebSocket
// (?user=), POST /push (the message array of POST /messages), GET /online?userIds=,
// GET /gc (collects garbage, for memory figures), GET /healthz, and for a durable
// baseline GET /commits (the group commits made, a number).
func ServeBaseline(ctx context.Context, ln net.Listener, opts BaselineOptions) error {
	b := &Baseline{conns: map[string]map[*websocket.Conn]bool{}}
	mux := http.NewServeMux()
	if opts.Log != "" {
		l, err := OpenGroupLog(opts.Log, opts.Hold)
		if err != nil {
			return err
		}
		defer l.Close()
		b.log = l
		mux.HandleFunc("GET /commits", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "%d\n", l.Commits())
		})
	}
	mux.HandleFunc("/{$}", b.ws)
	mux.HandleFunc("POST /push", b.push)
	mux.HandleFunc("GET /online", b.online)
	mux.HandleFunc("GET /gc", func(w http.ResponseWriter, _ *http.Request) { runtime.GC(); debug.FreeOSMemory() })
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
	srv := &http.Server{Handler: mux}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	err := srv.Serve(ln)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (b *Baseline) ws(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	b.mu.Lock()
	if b.conns[user] == nil {
		b.conns[user] = map[*websocket.Conn]bool{}
	}
	b.conns[user][c] = true
	b.mu.Unlock()
	for {
		if _, _, err := c.Read(context.Background()); err != nil {
			break
		}
	}
	c.CloseNow() // the hijacked socket outlives the handler otherwise
	b.mu.Lock()
	delete(b.conns[user], c)
	if len(b.conns[user]) == 0 {
		delete(b.conns, user)
	}
	b.mu.Unlock()
}

type pushMessage struct {
	UserID string `json:"UserId"`
	Body   string `json:"Body"`
}

func (b *Baseline) push(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msgs []pushMessage
	if err := json.Unmarshal(body, &msgs); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if b.log != nil {
		if err := b.log.Append(body); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	w.WriteHeader(http.StatusAccepted)
	go func() {
		for _, m := range msgs {
			b.mu.Lock()
			targets := make([]*websocket.Conn, 0, len(b.conns[m.UserID]))
			for c := range b.conns[m.UserID] {
				targets = append(targets, c)
			}
			b.mu.Unlock()
			for _, c := range targets {
				_ = c.Write(context.Background(), websocket.MessageText, []byte(m.Body))
			}
		}
	}()
}

func (b *Baseline) online(w http.ResponseWriter, r *http.Request) {
	ids := strings.Split(r.URL.Query().Get("userIds"), ",")
	type status struct {
		UserID      string `json:"UserId"`
		IsOnline    bool   `json:"IsOnline"`
		Connections int    `json:"Connections"`
	}
	out := make([]status, len(ids))
	b.mu.Lock()
	for i, id := range ids {
		n := len(b.conns[id])
		out[i] = status{UserID: id, IsOnline: n > 0, Connections: n}
	}
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
