package localrt_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/localrt"
)

// TestHeldMessagesBounded: the messages held for a recovering user's reconnect stop at
// MaxHeldMessages. At the bound, POST /messages answers 503 messages_held_full with
// Retry-After and the queue 503, before accepting anything; every message accepted before
// is kept and replayed at the reconnect, which brings the count down, and sending works
// again.
func TestHeldMessagesBounded(t *testing.T) {
	const bound = 3
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.RecoveryWindow = time.Minute
		c.MaxHeldMessages = bound
	})
	const held = "wspresence_messages_held"
	rc := newRecoveringClient(ts, "hana")
	away(t, ts, rc)
	want := append([]string{"before"}, sendMissed(ts, "hana", bound)...)
	waitFor(t, "the missed messages held", func() bool { return ts.metrics()[held] == bound })

	expectHeldFull(t, ts, "hana")
	// Any user: the bound is the process's memory, not one user's.
	expectError(t, ts.do(http.MethodPost, "/messages", testKey, []byte(`{"userId":"other","body":"x"}`)),
		http.StatusServiceUnavailable, httperr.CodeHeldFull)
	if got := ts.metrics()[held]; got != bound {
		t.Fatalf("%s = %.0f after the refusals, want %d", held, got, bound)
	}

	// The reconnect replays every message accepted, and the count falls.
	replaysThenReceives(t, ts, rc, want, bound)
}

// TestHeldMessagesBoundedPerUser: one user who stays away fills its own bound,
// MaxHeldMessagesPerUser, and only messages to it are refused (503 messages_held_full with
// Retry-After, the queue 503, a message to it and another user refused whole) while
// another recovering user's message is still accepted, held and replayed at its
// reconnect; both replays bring the count back to zero, and the first user is sent to
// again.
func TestHeldMessagesBoundedPerUser(t *testing.T) {
	const perUser = 2
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.RecoveryWindow = time.Minute
		c.MaxHeldMessagesPerUser = perUser
	})
	const held = "wspresence_messages_held"
	gone, other := newRecoveringClient(ts, "hana"), newRecoveringClient(ts, "ivo")
	away(t, ts, gone)
	away(t, ts, other)
	wantAway := append([]string{"before"}, sendMissed(ts, "hana", perUser)...)
	waitFor(t, "the missed messages held", func() bool { return ts.metrics()[held] == perUser })

	expectHeldFull(t, ts, "hana")
	expectError(t, ts.do(http.MethodPost, "/messages", testKey, []byte(`{"userIds":["ivo","hana"],"body":"both"}`)),
		http.StatusServiceUnavailable, httperr.CodeHeldFull)

	// Another user is still accepted and held, beside the full one.
	ts.send(`{"userId":"ivo","body":"for ivo"}`)
	waitFor(t, "the other user's message held", func() bool { return ts.metrics()[held] == perUser+1 })

	other.connect()
	other.waitReceived(t, 2)
	if a := other.lastAnswer(); !a.Recovered || a.Replayed != 1 {
		t.Fatalf("other user's recover answer %+v, want 1 replayed", a)
	}
	if got := other.received(); strings.Join(got, "|") != "before|for ivo" {
		t.Fatalf("other user received %q, want its own messages only (the refused one is not among them)", got)
	}
	waitFor(t, "the other user's message replayed", func() bool { return ts.metrics()[held] == perUser })

	replaysThenReceives(t, ts, gone, wantAway, perUser)
}

// away connects rc, has it receive a first message ("before") and closes it: what is sent
// to its user next is held for its reconnect.
func away(t *testing.T, ts *testServer, rc *recoveringClient) {
	t.Helper()
	rc.connect()
	ts.send(fmt.Sprintf(`{"userId":%q,"body":"before"}`, rc.user))
	rc.waitReceived(t, 1)
	rc.conn.Close(websocket.StatusNormalClosure, "")
	<-rc.ended
}

// sendMissed sends n messages to user and returns their bodies.
func sendMissed(ts *testServer, user string, n int) []string {
	var bodies []string
	for i := range n {
		body := fmt.Sprintf("missed %d", i)
		ts.send(fmt.Sprintf(`{"userId":%q,"body":%q}`, user, body))
		bodies = append(bodies, body)
	}
	return bodies
}

// replaysThenReceives reconnects rc and checks that the reconnect replays the replayed
// messages held for it, that no message is held any more, and that a message sent after
// is received: rc then holds want and "after", in order (nothing refused, nothing
// accepted lost).
func replaysThenReceives(t *testing.T, ts *testServer, rc *recoveringClient, want []string, replayed int) {
	t.Helper()
	rc.connect()
	rc.waitReceived(t, len(want))
	if a := rc.lastAnswer(); !a.Recovered || a.Replayed != replayed {
		t.Fatalf("recover answer %+v, want %d replayed", a, replayed)
	}
	waitFor(t, "the held messages replayed", func() bool { return ts.metrics()["wspresence_messages_held"] == 0 })
	ts.send(fmt.Sprintf(`{"userId":%q,"body":"after"}`, rc.user))
	want = append(want, "after")
	rc.waitReceived(t, len(want))
	if got := rc.received(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("received %q, want %q (nothing refused, nothing accepted lost)", got, want)
	}
}

// expectHeldFull checks that a message to user is refused for the held messages' bound:
// POST /messages with 503 messages_held_full and Retry-After, the queue with 503.
func expectHeldFull(t *testing.T, ts *testServer, user string) {
	t.Helper()
	r := ts.do(http.MethodPost, "/messages", testKey, []byte(fmt.Sprintf(`{"userId":%q,"body":"one too many"}`, user)))
	expectError(t, r, http.StatusServiceUnavailable, httperr.CodeHeldFull)
	if r.header.Get("Retry-After") == "" {
		t.Fatal("503 messages_held_full without Retry-After")
	}
	url := localrt.QueueURL(strings.TrimPrefix(ts.base, "http://"))
	body := fmt.Sprintf(`{"QueueUrl":%q,"MessageBody":%q}`, url, fmt.Sprintf(`{"UserId":%q,"Body":"queued"}`, user))
	if status, resp := signedSQS(t, ts, "AmazonSQS.SendMessage", []byte(body)); status != http.StatusServiceUnavailable {
		t.Fatalf("queue SendMessage to %s at the bound: %d %s, want 503", user, status, resp)
	}
}
