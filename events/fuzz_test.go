package events_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/wspresence/wspresence/events"
)

// FuzzDecodeMessages: no input panics the decoder; what it accepts satisfies the limits
// and survives a round trip.
func FuzzDecodeMessages(f *testing.F) {
	f.Add([]byte(`{"UserId":"1234","Body":"hello"}`))
	f.Add([]byte(`[{"userIds":["a","b"],"body":"x","MessageId":"m"}]`))
	f.Add([]byte(`{"UserId":12}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"UserId":"a","Body":"x"} trailing`))
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := events.DecodeMessages(data, 100)
		if err != nil {
			if !errors.Is(err, events.ErrInvalidMessage) {
				t.Fatalf("error does not wrap ErrInvalidMessage: %v", err)
			}
			return
		}
		if len(msgs) == 0 || len(msgs) > 100 {
			t.Fatalf("%d messages accepted", len(msgs))
		}
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
			again, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			back, err := events.DecodeMessage(again)
			if err != nil || back.Body != m.Body || back.UserID != m.UserID || len(back.UserIDs) != len(m.UserIDs) {
				t.Fatalf("round trip of %+v: %+v, %v", m, back, err)
			}
		}
	})
}
