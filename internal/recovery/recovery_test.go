package recovery_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/wspresence/wspresence/internal/recovery"
)

func TestParseRequest(t *testing.T) {
	for _, c := range []struct {
		in   string
		want recovery.Request
		ok   bool
	}{
		{`{"action":"recover"}`, recovery.Request{}, true},
		{`{"action":"recover","epoch":"E","offset":7}`, recovery.Request{HasPosition: true, Epoch: "E", Offset: 7}, true},
		{`{"action":"recover","epoch":"E","offset":0}`, recovery.Request{HasPosition: true, Epoch: "E"}, true},
		{`{"action":"recover","epoch":"E"}`, recovery.Request{}, false},
		{`{"action":"recover","offset":3}`, recovery.Request{}, false},
		{`{"action":"recover","epoch":"","offset":3}`, recovery.Request{}, false},
		{`{"action":"recover","epoch":5,"offset":3}`, recovery.Request{}, false},
		{`{"action":"recover","epoch":"E","offset":-1}`, recovery.Request{}, false},
		{`{"action":"recover","epoch":"E","offset":1.5}`, recovery.Request{}, false},
		{`{"action":"recover","epoch":"E","offset":"7"}`, recovery.Request{}, false},
		{`{"action":"ping"}`, recovery.Request{}, false},
		{`not json`, recovery.Request{}, false},
	} {
		got, err := recovery.ParseRequest([]byte(c.in))
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, recovery.ErrInvalid)) || got != c.want {
			t.Errorf("ParseRequest(%s) = %+v, %v", c.in, got, err)
		}
	}
}

func TestDecide(t *testing.T) {
	pos := func(e string, o int64) recovery.Request { return recovery.Request{HasPosition: true, Epoch: e, Offset: o} }
	for _, c := range []struct {
		name    string
		req     recovery.Request
		keeping bool
		replay  bool
		from    int64
		reason  recovery.Reason
	}{
		{"fresh", recovery.Request{}, true, false, 0, recovery.ReasonFresh},
		{"behind", pos("E", 3), true, true, 3, ""},
		{"at top", pos("E", 9), true, true, 9, ""},
		{"ahead", pos("E", 10), true, false, 0, recovery.ReasonAhead},
		{"other epoch", pos("F", 3), true, false, 0, recovery.ReasonEpochChanged},
		{"window 0", pos("E", 3), false, false, 0, recovery.ReasonTooOld},
		{"window 0, fresh", recovery.Request{}, false, false, 0, recovery.ReasonTooOld},
	} {
		d := recovery.Decide(c.req, "E", 9, c.keeping)
		if d.Replay != c.replay || d.From != c.from || d.Answer.Reason != c.reason {
			t.Errorf("%s: %+v", c.name, d)
		}
		if !d.Replay && (d.Answer.Recovered || d.Answer.Epoch != "E" || d.Answer.Offset != 9) {
			t.Errorf("%s: answer %+v, want the top of the stream", c.name, d.Answer)
		}
	}
}

func TestFrames(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(recovery.MessageFrame("E", 7, "m-1", `{"a":"<b>"}`), &m); err != nil ||
		m["type"] != "message" || m["epoch"] != "E" || m["offset"] != 7.0 || m["messageId"] != "m-1" || m["body"] != `{"a":"<b>"}` {
		t.Fatalf("message frame %v %v", m, err)
	}
	if got := string(recovery.Done("E", 9, 2).Frame()); got != `{"type":"recovered","recovered":true,"epoch":"E","offset":9,"replayed":2}` {
		t.Fatalf("recovered frame %s", got)
	}
	if got := string(recovery.TooOld("E2", 40).Frame()); got != `{"type":"recovered","recovered":false,"reason":"too_old","epoch":"E2","offset":40,"replayed":0}` {
		t.Fatalf("not recovered frame %s", got)
	}
	if got := string(recovery.ErrorFrame(recovery.CodeInvalidFrame, "x")); got != `{"type":"error","code":"invalid_frame","message":"x"}` {
		t.Fatalf("error frame %s", got)
	}
}

func TestOffered(t *testing.T) {
	h := http.Header{}
	if recovery.Offered(h) {
		t.Fatal("no header offers nothing")
	}
	h.Set("Sec-WebSocket-Protocol", "chat, wspresence.v1")
	if !recovery.Offered(h) {
		t.Fatal("a list holding it offers it")
	}
	h.Set("Sec-WebSocket-Protocol", "wspresence.v2")
	if recovery.Offered(h) {
		t.Fatal("another version is not it")
	}
}
