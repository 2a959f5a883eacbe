package localrt_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
)

// TestChurnNeverFlaps: 200 users each keep 1 to 3 connections and churn them (closing one,
// opening one) at random for a while, with a 1 s grace period, so that reconnects land both
// inside and outside the grace period. The published transitions alternate strictly per
// user, starting with UserOnline, and no UserOffline is published for an offline period
// during which a reconnect of the user was accepted (its upgrade completed before the
// period's grace deadline).
func TestChurnNeverFlaps(t *testing.T) {
	const users = 200
	const grace = time.Second
	duration := 6 * time.Second
	if v, err := strconv.Atoi(os.Getenv("WSPRESENCE_CHURN_SECONDS")); err == nil && v > 0 {
		duration = time.Duration(v) * time.Second
	}
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.OfflineGrace = grace })
	sub := ts.subscribe("0")

	type user struct {
		id       string
		accepted []time.Time // when each connection's upgrade completed
		closed   []time.Time // when the client closed each connection
	}
	all := make([]*user, users)
	var wg sync.WaitGroup
	stop := time.Now().Add(duration)
	var dialErrs sync.Map
	for i := range users {
		u := &user{id: fmt.Sprintf("churn-%03d", i)}
		all[i] = u
		tok := ts.token(u.id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var open []*websocket.Conn
			dial := func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+tok, nil)
				if err != nil {
					dialErrs.Store(u.id, err)
					return
				}
				u.accepted = append(u.accepted, time.Now())
				go func() { // read until closed, so close handshakes complete
					for {
						if _, _, err := c.Read(context.Background()); err != nil {
							return
						}
					}
				}()
				open = append(open, c)
			}
			closeOne := func() {
				k := rand.IntN(len(open))
				c := open[k]
				open = append(open[:k], open[k+1:]...)
				u.closed = append(u.closed, time.Now())
				_ = c.Close(websocket.StatusNormalClosure, "churn")
			}
			dial()
			for time.Now().Before(stop) {
				time.Sleep(time.Duration(50+rand.IntN(600)) * time.Millisecond)
				switch {
				case len(open) == 0:
					dial()
				case len(open) < 3 && rand.IntN(3) == 0:
					dial()
				case len(open) > 1:
					closeOne()
				default:
					// The last connection closes: the user reconnects just before the grace
					// deadline (where a decision that lags the log would flap), anywhere
					// inside the grace period, or after it.
					closeOne()
					switch rand.IntN(3) {
					case 0:
						time.Sleep(grace - time.Duration(rand.IntN(80))*time.Millisecond)
					case 1:
						time.Sleep(time.Duration(rand.IntN(int(grace/time.Millisecond))) * time.Millisecond)
					default:
						time.Sleep(grace + time.Duration(rand.IntN(500))*time.Millisecond)
					}
					dial()
				}
			}
			for len(open) > 0 {
				closeOne()
			}
		}()
	}
	wg.Wait()
	dialErrs.Range(func(k, v any) bool { t.Errorf("dial as %v: %v", k, v); return false })
	// Every user is offline now: wait for the last grace periods to end.
	deadline := time.Now().Add(grace + 10*time.Second)
	for {
		offline := 0
		for _, u := range all {
			on, off := len(sub.of(events.DetailUserOnline, u.id)), len(sub.of(events.DetailUserOffline, u.id))
			if on > 0 && on == off {
				offline++
			}
		}
		if offline == users || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	sub.mu.Lock()
	byUser := map[string][]events.Envelope{}
	for _, env := range sub.got {
		if env.DetailType == events.DetailUserOnline || env.DetailType == events.DetailUserOffline {
			var d struct {
				UserID string `json:"userId"`
			}
			_ = json.Unmarshal(env.Detail, &d)
			byUser[d.UserID] = append(byUser[d.UserID], env)
		}
	}
	sub.mu.Unlock()
	flaps, offlines, insideGrace := 0, 0, 0
	for _, u := range all {
		seq := byUser[u.id]
		if len(seq) == 0 || len(seq)%2 != 0 {
			t.Errorf("%s: %d transitions, want an even number ending offline", u.id, len(seq))
		}
		for i, env := range seq {
			want := events.DetailUserOnline
			if i%2 == 1 {
				want = events.DetailUserOffline
			}
			if env.DetailType != want {
				t.Fatalf("%s: transition %d is %s, want %s (no alternation)", u.id, i, env.DetailType, want)
			}
			if env.DetailType != events.DetailUserOffline {
				continue
			}
			offlines++
			var d struct {
				At time.Time `json:"at"`
			}
			_ = json.Unmarshal(env.Detail, &d)
			for _, a := range u.accepted {
				if a.After(d.At) && a.Before(d.At.Add(grace)) {
					flaps++
					t.Errorf("%s: UserOffline for the period from %s, but a reconnect was accepted %s later, inside the grace period",
						u.id, d.At.Format("15:04:05.000"), a.Sub(d.At))
				}
			}
		}
		// Count the reconnects the run made inside a grace period (after the user's last
		// close, before its deadline), to show the run exercised them.
		for _, c := range u.closed {
			for _, a := range u.accepted {
				if a.After(c) && a.Sub(c) < grace {
					insideGrace++
					break
				}
			}
		}
	}
	t.Logf("%d users, %s: %d UserOffline, %d flaps, %d reconnects within a grace period of a close", users, duration, offlines, flaps, insideGrace)
	if insideGrace == 0 || offlines == 0 {
		t.Fatalf("the run exercised no reconnect inside a grace period (%d) or no offline period (%d)", insideGrace, offlines)
	}
}
