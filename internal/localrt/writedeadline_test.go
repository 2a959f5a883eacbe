package localrt_test

import (
	"context"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
)

// closedAs reports whether the log holds user's connection closed for reason.
func closedAs(ts *testServer, user string, reason events.CloseReason) bool {
	log, _ := ts.srv.Store().Log(context.Background())
	for _, e := range log {
		if e.Type == events.TypeConnectionClosed && e.UserID == user && e.Reason == reason {
			return true
		}
	}
	return false
}

// TestStalledWriteEndsAtTheWriteTimeout: a client that stops reading, with a send queue
// long enough never to fill, is closed as expired once a frame's write has waited for the
// write timeout; messages to others keep flowing.
func TestStalledWriteEndsAtTheWriteTimeout(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.SendQueue = 10000 // the write timeout, not the queue, must catch it
		c.WriteTimeout = 300 * time.Millisecond
	})
	stallReader(t, ts)
}

// TestWriteDeadlineDoesNotOutliveTheWrites: once its queue is written, a connection's
// pings and later frames are not cut short by the deadline of its earlier writes.
func TestWriteDeadlineDoesNotOutliveTheWrites(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.WriteTimeout = 100 * time.Millisecond
		c.PingInterval = 50 * time.Millisecond
	})
	c := ts.dial("u1")
	waitFor(t, "online", func() bool { return ts.userStatus("u1") == "online" })
	ts.send(`{"UserId":"u1","Body":"first"}`)
	c.expectFrame(t, "first")
	time.Sleep(time.Second) // ten write timeouts, twenty pings
	ts.send(`{"UserId":"u1","Body":"second"}`)
	c.expectFrame(t, "second")
	if closedAs(ts, "u1", events.ReasonExpired) {
		t.Fatal("the connection was closed as expired")
	}
}
