package localrt_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// TestPipelinedMessagesAnsweredInOrder: two POST /messages sent back to back in one write
// on one connection (HTTP pipelining) are both answered 202, in order, and both delivered.
// The second request's bytes arrive while the first one's handler runs: they stay for the
// server's next read, not taken by the read net/http makes to notice a client hanging up.
func TestPipelinedMessagesAnsweredInOrder(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	c := ts.dial("P")
	conn, err := net.Dial("tcp", ts.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var reqs []byte
	for _, body := range []string{`{"UserId":"P","Body":"first"}`, `{"UserId":"P","Body":"second"}`} {
		reqs = append(reqs, "POST /messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: "+testKey+
			"\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body...)
	}
	if _, err := conn.Write(reqs); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	for i := range 2 {
		resp, err := http.ReadResponse(rd, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		var reply localrt.EnqueueReply
		err = json.NewDecoder(resp.Body).Decode(&reply)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || err != nil || len(reply.MessageIDs) != 1 {
			t.Fatalf("answer %d: %d %v %v", i, resp.StatusCode, reply, err)
		}
	}
	c.expectFrame(t, "first")
	c.expectFrame(t, "second")
}
