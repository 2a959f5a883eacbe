package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"unicode/utf8"

	"github.com/wspresence/wspresence/events"
)

// FuzzDecodeMessages works on raw bytes: no input panics the decoder; whatever it accepts
// satisfies the limits, is valid UTF-8, was not rewritten (every U+FFFD it holds was sent
// as one) and round-trips byte for byte, ids included.
func FuzzDecodeMessages(f *testing.F) {
	f.Add([]byte(`{"UserId":"1234","Body":"hello"}`))
	f.Add([]byte(`[{"userIds":["a","b"],"body":"x","MessageId":"m"}]`))
	f.Add([]byte(`{"UserId":12}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"UserId":"a","Body":"x"} trailing`))
	f.Add([]byte("{\"MessageId\":\"\xff\",\"UserId\":\"a\",\"Body\":\"x\"}"))
	f.Add([]byte("{\"MessageId\":\"\xfe\",\"UserId\":\"a\",\"Body\":\"x\"}"))
	f.Add([]byte("{\"MessageId\":\"\uFFFD\",\"UserId\":\"a\",\"Body\":\"x\"}"))
	f.Add([]byte(`{"MessageId":"\ud800","UserId":"a","Body":"x"}`))
	f.Add([]byte(`{"UserId":"\udc00x","Body":"\ud83d\ude00"}`))
	f.Add([]byte("{\"UserIds\":[\"a\",\"b\xc3\"],\"Body\":\"x\"}"))
	f.Add([]byte(`{"UserId":"x,y","Body":"x"}`))
	f.Add([]byte(`{"UserId":" pad ","Body":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := events.DecodeMessages(data, 100)
		if err != nil {
			if !errors.Is(err, events.ErrInvalidMessage) {
				t.Fatalf("error does not wrap ErrInvalidMessage: %v", err)
			}
			return
		}
		if !utf8.Valid(data) {
			t.Fatalf("accepted input that is not UTF-8: %q", data)
		}
		if len(msgs) == 0 || len(msgs) > 100 {
			t.Fatalf("%d messages accepted", len(msgs))
		}
		replacements := 0
		sentReplacements := bytes.Count(data, []byte("\uFFFD")) + bytes.Count(bytes.ToLower(data), []byte(`\ufffd`))
		for _, m := range msgs {
			r := m.Recipients()
			if len(r) == 0 || len(r) > events.MaxRecipients || len(m.Body) > events.MaxBodyBytes {
				t.Fatalf("accepted %+v", m)
			}
			for _, id := range r {
				if events.ValidateUserID(id) != nil {
					t.Fatalf("accepted user id %q", id)
				}
			}
			texts := append([]string{m.MessageID, m.UserID, m.Body}, m.UserIDs...)
			for _, s := range texts {
				if !utf8.ValidString(s) {
					t.Fatalf("accepted text that is not UTF-8: %q", s)
				}
				for _, c := range s {
					if c == utf8.RuneError {
						replacements++
					}
				}
			}
			again, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			back, err := events.DecodeMessage(again)
			if err != nil {
				t.Fatalf("round trip of %+v: %v", m, err)
			}
			if back.MessageID != m.MessageID || back.UserID != m.UserID || back.Body != m.Body || !slices.Equal(back.UserIDs, m.UserIDs) {
				t.Fatalf("round trip changed %+v into %+v", m, back)
			}
		}
		if replacements > sentReplacements {
			t.Fatalf("decoded text holds %d U+FFFD, the input sent %d: invalid text was rewritten (%q)", replacements, sentReplacements, data)
		}
	})
}
