package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// recoverySubprotocol is the subprotocol of clients that recover missed messages.
const recoverySubprotocol = "wspresence.v1"

// RecoveryResult is the recovery scenario: Clients clients of as many users, each
// recovering; PerClient messages each delivered live, then PerClient more sent while
// every client is away and replayed when they all reconnect at once.
type RecoveryResult struct {
	Clients   int `json:"clients"`
	PerClient int `json:"messages_per_client"`
	// LiveMsgsPerS is the live messages received per second, from the first POST (8 in
	// flight, 100 messages each) to the last frame; ReplayMsgsPerS the replayed messages received per second, from the
	// first reconnect to the last answer (the reconnects included).
	LiveMsgsPerS   float64 `json:"live_msgs_per_s"`
	ReplayMsgsPerS float64 `json:"replay_msgs_per_s"`
	LiveSeconds    float64 `json:"live_seconds"`
	ReplaySeconds  float64 `json:"replay_seconds"`
	Replayed       int64   `json:"replayed"`
	// Recovered counts the reconnects answered recovered:true.
	Recovered int `json:"recovered"`
	Errors    int `json:"errors"`
}

// recoveringClient is one client of the recovery scenario: its position and counters.
type recoveringClient struct {
	user     string
	mu       sync.Mutex
	epoch    string
	offset   int64
	conn     *websocket.Conn
	messages *atomic.Int64
}

// connect dials with the recovery subprotocol, sends recover from the client's position
// and returns the answer; message frames then count in messages.
func (c *recoveringClient) connect(ctx context.Context, t *Target) (map[string]any, error) {
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(dctx, t.WebSocketURL(c.user), &websocket.DialOptions{Subprotocols: []string{recoverySubprotocol}})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(1 << 20)
	c.mu.Lock()
	req := `{"action":"recover"}`
	if c.epoch != "" {
		req = fmt.Sprintf(`{"action":"recover","epoch":%q,"offset":%d}`, c.epoch, c.offset)
	}
	c.conn = conn
	c.mu.Unlock()
	if err := conn.Write(dctx, websocket.MessageText, []byte(req)); err != nil {
		conn.CloseNow()
		return nil, err
	}
	answered := make(chan map[string]any, 1)
	go func() {
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			var f struct {
				Type   string `json:"type"`
				Epoch  string `json:"epoch"`
				Offset int64  `json:"offset"`
			}
			if json.Unmarshal(data, &f) != nil {
				continue
			}
			c.mu.Lock()
			switch f.Type {
			case "message":
				if f.Epoch != c.epoch || f.Offset > c.offset {
					c.epoch, c.offset = f.Epoch, f.Offset
					c.messages.Add(1)
				}
			case "recovered":
				c.epoch, c.offset = f.Epoch, f.Offset
				var a map[string]any
				_ = json.Unmarshal(data, &a)
				answered <- a
			}
			c.mu.Unlock()
		}
	}()
	select {
	case a := <-answered:
		return a, nil
	case <-dctx.Done():
		conn.CloseNow()
		return nil, dctx.Err()
	}
}

// Recovery runs the recovery scenario with n clients and perClient messages each way.
func Recovery(ctx context.Context, t *Target, n, perClient, batch int) RecoveryResult {
	res := RecoveryResult{Clients: n, PerClient: perClient}
	var messages atomic.Int64
	clients := make([]*recoveringClient, n)
	for i := range clients {
		clients[i] = &recoveringClient{user: "rec-" + strconv.Itoa(i), messages: &messages}
	}
	connectAll := func() (recovered int, errs int) {
		var wg sync.WaitGroup
		var rec, bad atomic.Int64
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := c.connect(ctx, t)
				switch {
				case err != nil:
					bad.Add(1)
				case a["recovered"] == true:
					rec.Add(1)
				}
			}()
		}
		wg.Wait()
		return int(rec.Load()), int(bad.Load())
	}
	users := make([]string, n)
	for i, c := range clients {
		users[i] = c.user
	}
	_, errs := connectAll()
	res.Errors += errs

	start := time.Now()
	res.Errors += sendEach(ctx, t, users, perClient, batch)
	want := int64(n * perClient)
	awaitCount(&messages, want, 30*time.Second)
	res.LiveSeconds = time.Since(start).Seconds()
	res.LiveMsgsPerS = float64(messages.Load()) / res.LiveSeconds
	if messages.Load() < want {
		res.Errors++
	}

	for _, c := range clients {
		if c.conn != nil {
			_ = c.conn.Close(websocket.StatusNormalClosure, "")
		}
	}
	res.Errors += sendEach(ctx, t, users, perClient, batch)
	messages.Store(0)
	start = time.Now()
	res.Recovered, errs = connectAll()
	res.ReplaySeconds = time.Since(start).Seconds()
	res.Replayed = messages.Load()
	res.ReplayMsgsPerS = float64(res.Replayed) / res.ReplaySeconds
	res.Errors += errs
	if res.Replayed < want || res.Recovered < n {
		res.Errors++
	}
	for _, c := range clients {
		if c.conn != nil {
			c.conn.CloseNow()
		}
	}
	return res
}

// sendEach posts perClient messages to each of users, batch messages a request from
// senders concurrent requests, and returns the requests not accepted.
func sendEach(ctx context.Context, t *Target, users []string, perClient, batch int) int {
	type msg struct {
		UserID string `json:"UserId"`
		Body   string `json:"Body"`
	}
	var all []msg
	for k := range perClient {
		for _, u := range users {
			all = append(all, msg{UserID: u, Body: "r" + strconv.Itoa(k)})
		}
	}
	var errs, next atomic.Int64
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: senders}}
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)-1) * batch
				if i >= len(all) {
					return
				}
				body, _ := json.Marshal(all[i:min(i+batch, len(all))])
				if !push(ctx, client, t, body) {
					errs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(errs.Load())
}

// senders is how many requests the recovery scenario's sender keeps in flight.
const senders = 8

// awaitCount waits up to limit for n to reach want.
func awaitCount(n *atomic.Int64, want int64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for n.Load() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}
