package localrt_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// TestOutboxRetention: published events older than the outbox retention are pruned,
// whatever reads them. A reader of /events that asks for them gets 410 with what to do;
// one that asks from the oldest kept, or the head, reads on. A webhook that lagged past
// them skips them (counted in a metric, logged) and goes on with the oldest kept.
func TestOutboxRetention(t *testing.T) {
	var mu sync.Mutex
	var got []string
	down := true
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		got = append(got, string(body))
	}))
	defer hook.Close()
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.OutboxRetention = time.Second
		c.Webhooks = []string{hook.URL}
	})
	// Two MessageUndeliverable (offline), accepted together: their outcomes are recorded in
	// one commit, so one prune forgets both.
	ts.send(`[{"UserId":"old-1","Body":"x"},{"UserId":"old-2","Body":"x"}]`)
	gone := func() bool { // the answer to a reader asking from the start (a stream when it is not 410)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.base+"/events?after=0", nil)
		req.Header.Set("X-Api-Key", testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusGone {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), "events_pruned")
	}
	waitFor(t, "the old events pruned", gone)
	mu.Lock()
	down = false // the webhook's receiver comes back, long after
	mu.Unlock()
	ts.send(`{"UserId":"new-1","Body":"x"}`)
	waitFor(t, "the webhook going on past the pruned events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && strings.Contains(got[len(got)-1], "new-1")
	})
	mu.Lock()
	for _, b := range got {
		if strings.Contains(b, "old-") {
			t.Fatalf("the webhook got a pruned event: %s", b)
		}
	}
	mu.Unlock()
	metrics := ts.do(http.MethodGet, "/metrics", "", nil)
	if !strings.Contains(string(metrics.body), "wspresence_webhook_events_missed_total 2") {
		t.Fatalf("the skipped events are not counted: %s", metrics.body)
	}
	// A reader from the head reads on.
	sub := ts.subscribe("")
	ts.send(`{"UserId":"new-2","Body":"x"}`)
	waitFor(t, "a new event from the head", func() bool { return len(sub.of("MessageUndeliverable", "new-2")) == 1 })
	sub.close()
}
