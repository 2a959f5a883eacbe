package localrt_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/wspresence/wspresence/internal/localrt"
)

// The answer of POST /messages is byte for byte what encoding/json writes for it,
// whatever the ids hold (quotes, backslashes, HTML characters, control and non-ASCII
// characters), and a generated id comes back as written.
func TestEnqueueReplyIsTheJSONEncoding(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ids := []string{"plain-id", `quote"and\back`, "<b>&amp;</b>", "é€\u2028x", "tab\there"}
	var msgs []map[string]string
	for _, id := range ids {
		msgs = append(msgs, map[string]string{"MessageId": id, "UserId": "u1", "Body": "x"})
	}
	msgs = append(msgs, map[string]string{"UserId": "u1", "Body": "generated id"})
	body, _ := json.Marshal(msgs)
	r := ts.do(http.MethodPost, "/messages", testKey, body)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /messages: %d %s", r.status, r.body)
	}
	var got localrt.EnqueueReply
	if err := json.Unmarshal(r.body, &got); err != nil || len(got.MessageIDs) != len(msgs) {
		t.Fatalf("reply %q: %v", r.body, err)
	}
	var want bytes.Buffer
	_ = json.NewEncoder(&want).Encode(localrt.EnqueueReply{MessageIDs: append(ids, got.MessageIDs[len(ids)])})
	if !bytes.Equal(r.body, want.Bytes()) {
		t.Errorf("reply\n%q, want\n%q", r.body, want.Bytes())
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if v := r.header.Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("X-Content-Type-Options %q", v)
	}
}
