package recovery_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/wspresence/wspresence/internal/recovery"
)

func TestRequested(t *testing.T) {
	for h, want := range map[string]bool{"wspresence.v1": true, "chat, wspresence.v1": true, " wspresence.v1 ,x": true,
		"": false, "wspresence.v2": false, "WSPRESENCE.V1": false, "wspresence.v1x": false} {
		if got := recovery.Requested(h); got != want {
			t.Errorf("Requested(%q) = %v", h, got)
		}
	}
}

func TestParseRequest(t *testing.T) {
	r, err := recovery.ParseRequest([]byte(`{"action":"recover"}`))
	if err != nil || r.At != nil {
		t.Fatalf("fresh: %+v %v", r, err)
	}
	r, err = recovery.ParseRequest([]byte(`{"action":"recover","epoch":"E","offset":7}`))
	if err != nil || r.At == nil || *r.At != (recovery.Position{Epoch: "E", Offset: 7}) {
		t.Fatalf("position: %+v %v", r, err)
	}
	for _, bad := range []string{`{"action":"recover","epoch":"E"}`, `{"action":"recover","offset":1}`, `[]`, `{"action":"ping"}`,
		`{"action":"recover","epoch":"","offset":1}`, `{"action":"recover","epoch":"E","offset":-1}`, `{"action":"recover","epoch":"E","offset":"1"}`} {
		if _, err := recovery.ParseRequest([]byte(bad)); !errors.Is(err, recovery.ErrInvalidRequest) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func at(e string, o int64) recovery.Request {
	return recovery.Request{At: &recovery.Position{Epoch: e, Offset: o}}
}

func TestDecide(t *testing.T) {
	s := recovery.Stream{Epoch: "E", Top: 9, Kept: []int64{6, 7, 8, 9, 10}}
	for _, c := range []struct {
		name   string
		req    recovery.Request
		s      recovery.Stream
		off    bool
		want   recovery.Recovered
		replay []int64
	}{
		{"fresh", recovery.Request{}, s, false, recovery.Recovered{Reason: recovery.ReasonFresh, Epoch: "E", Offset: 9}, nil},
		{"epoch changed", at("D", 3), s, false, recovery.Recovered{Reason: recovery.ReasonEpochChanged, Epoch: "E", Offset: 9}, nil},
		{"ahead", at("E", 12), s, false, recovery.Recovered{Reason: recovery.ReasonAhead, Epoch: "E", Offset: 9}, nil},
		{"at the top", at("E", 9), s, false, recovery.Recovered{Recovered: true, Epoch: "E", Offset: 9}, nil},
		{"missed some", at("E", 7), s, false, recovery.Recovered{Recovered: true, Epoch: "E", Offset: 10, Replayed: 3}, []int64{8, 9, 10}},
		{"too old", at("E", 4), s, false, recovery.Recovered{Reason: recovery.ReasonTooOld, Epoch: "E", Offset: 9}, nil},
		{"hole", at("E", 5), recovery.Stream{Epoch: "E", Top: 9, Kept: []int64{6, 8, 9}}, false, recovery.Recovered{Reason: recovery.ReasonTooOld, Epoch: "E", Offset: 9}, nil},
		{"hole past the top", at("E", 5), recovery.Stream{Epoch: "E", Top: 7, Kept: []int64{6, 7, 9}}, false, recovery.Recovered{Recovered: true, Epoch: "E", Offset: 7, Replayed: 2}, []int64{6, 7}},
		{"no window", at("E", 7), s, true, recovery.Recovered{Reason: recovery.ReasonTooOld, Epoch: "E", Offset: 9}, nil},
	} {
		p := recovery.Decide(c.req, c.s, !c.off)
		if p.Answer != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, p.Answer, c.want)
		}
		var got []int64
		for _, o := range c.s.Kept {
			if p.Replays(c.req, o) {
				got = append(got, o)
			}
		}
		if len(got) != len(c.replay) || (len(got) > 0 && got[len(got)-1] != c.replay[len(c.replay)-1]) {
			t.Errorf("%s: replays %v, want %v", c.name, got, c.replay)
		}
	}
	if !recovery.Complete(recovery.Position{Epoch: "E", Offset: 5}, []int64{6, 7}, 7) || recovery.Complete(recovery.Position{Epoch: "E", Offset: 5}, []int64{6}, 7) {
		t.Fatal("Complete")
	}
}

func TestFrames(t *testing.T) {
	var m map[string]any
	_ = json.Unmarshal(recovery.MessageFrame("E", 7, "m-1", "hi"), &m)
	if m["type"] != "message" || m["epoch"] != "E" || m["offset"] != float64(7) || m["messageId"] != "m-1" || m["body"] != "hi" {
		t.Fatalf("message frame %v", m)
	}
	if got := string(recovery.Recovered{Recovered: true, Epoch: "E", Offset: 9, Replayed: 2}.Frame()); got != `{"type":"recovered","recovered":true,"epoch":"E","offset":9,"replayed":2}` {
		t.Fatal(got)
	}
	if got := string(recovery.Recovered{Reason: recovery.ReasonTooOld, Epoch: "E2", Offset: 40}.Frame()); got != `{"type":"recovered","recovered":false,"reason":"too_old","epoch":"E2","offset":40,"replayed":0}` {
		t.Fatal(got)
	}
	if got := string(recovery.ErrorFrame(recovery.CodeInvalidFrame, "x")); got != `{"type":"error","code":"invalid_frame","message":"x"}` {
		t.Fatal(got)
	}
}
