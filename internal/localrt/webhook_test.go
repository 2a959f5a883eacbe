package localrt_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/schematest"
)

// receiver is a webhook endpoint that checks signatures and fails its first answers.
type receiver struct {
	mu       sync.Mutex
	secret   string
	failures int
	got      []events.Envelope
	bad      int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	ts := req.Header.Get(localrt.WebhookTimestampHeader)
	if req.Header.Get(localrt.WebhookSignatureHeader) != localrt.SignWebhook([]byte(r.secret), ts, body) {
		r.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.failures > 0 {
		r.failures--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var env events.Envelope
	_ = json.Unmarshal(body, &env)
	if req.Header.Get(localrt.WebhookEventIDHeader) != env.ID {
		r.bad++
	}
	r.got = append(r.got, env)
}

func (r *receiver) types() []events.DetailType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.DetailType
	for _, e := range r.got {
		out = append(out, e.DetailType)
	}
	return out
}

// TestWebhooksAreSignedOrderedAndAtLeastOnce: events reach the webhook signed, in order,
// through the receiver's failures, and a restart resumes after the last acknowledged one.
func TestWebhooksAreSignedOrderedAndAtLeastOnce(t *testing.T) {
	rcv := &receiver{secret: "webhook-secret-0123456789", failures: 2}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	dir := t.TempDir()
	withHook := func(c *localrt.Config) { c.Webhooks = []string{hook.URL}; c.WebhookSecret = rcv.secret }
	ts := startServer(t, dir, withHook)
	c := ts.dial("W")
	waitFor(t, "UserOnline through the failures", func() bool { return len(rcv.types()) == 1 })
	c.close(t)
	waitFor(t, "UserOffline", func() bool { return len(rcv.types()) == 2 })
	ts.send(`{"UserId":"nobody","Body":"x"}`)
	waitFor(t, "MessageUndeliverable", func() bool { return len(rcv.types()) == 3 })
	want := []events.DetailType{events.DetailUserOnline, events.DetailUserOffline, events.DetailMessageUndeliverable}
	got := rcv.types()
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("webhook order %v, want %v", got, want)
		}
	}
	rcv.mu.Lock()
	for _, e := range rcv.got {
		data, _ := json.Marshal(e)
		schematest.CheckEnvelope(t, data)
	}
	if rcv.bad != 0 {
		t.Fatalf("%d requests with a bad signature or event id header", rcv.bad)
	}
	rcv.mu.Unlock()
	ts.stop()

	ts2 := startServer(t, dir, withHook)
	ts2.send(`{"UserId":"nobody","Body":"y"}`)
	waitFor(t, "the next event after the restart", func() bool { return len(rcv.types()) == 4 })
	if got := rcv.types(); got[3] != events.DetailMessageUndeliverable {
		t.Fatalf("after restart the webhook got %v: acknowledged events were sent again", got)
	}
}
