//go:build linux

package localrt_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
)

// TestDeliveredMeansWritten: MessageDelivered is recorded once a frame has been written to
// the connection, never when it is merely queued. A client with a tiny receive buffer reads
// nothing while 400 frames of 64 KB (25 MB) are sent to it: the kernel can hold a few MB,
// so most frames wait in the server's queue, and those are not reported delivered; once the
// client reads them all, all are.
func TestDeliveredMeansWritten(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.SendQueue = 1000
		c.WriteTimeout = time.Minute
		// The client reads nothing for a while, pongs included: on a loaded machine that can
		// outlast the default 30 s ping interval, which would close the connection.
		c.PingInterval = 5 * time.Minute
	})
	sub := ts.subscribe("0")
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("slow"), &websocket.DialOptions{HTTPClient: client})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)

	const n = 400
	pad := strings.Repeat("p", 64*1024)
	for batch := range n / 10 {
		var msgs []string
		for i := range 10 {
			msgs = append(msgs, fmt.Sprintf(`{"UserId":"slow","MessageId":"m%03d","Body":"%s"}`, batch*10+i, pad))
		}
		ts.send("[" + strings.Join(msgs, ",") + "]")
	}
	delivered := func() int { return len(sub.of(events.DetailMessageDelivered, "slow")) }
	// Let the server write what the kernel takes, then count what was reported.
	stable, last := 0, -1
	for stable < 5 {
		time.Sleep(100 * time.Millisecond)
		if d := delivered(); d == last {
			stable++
		} else {
			stable, last = 0, d
		}
	}
	if last >= n || last == 0 {
		t.Fatalf("%d of %d frames reported delivered while the client read nothing and the kernel holds a few MB", last, n)
	}
	if u := sub.of(events.DetailMessageUndeliverable, "slow"); len(u) != 0 {
		t.Fatalf("undeliverable: %v", u)
	}
	for i := range n {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, data, err := conn.Read(rctx)
		cancel()
		if err != nil || len(data) != len(pad) {
			t.Fatalf("frame %d: %d bytes, %v", i, len(data), err)
		}
	}
	waitFor(t, "every frame reported delivered once read", func() bool { return delivered() == n })
	t.Logf("before the client read: %d of %d frames reported delivered (the written ones)", last, n)
}
