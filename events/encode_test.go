package events_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestAppendEnvelopeIsTheJSONEncoding: the envelope AppendEnvelope writes is, byte for byte,
// json.Marshal's of NewEnvelope's, for every event type, plain texts and texts that need
// escapes (quotes, HTML, control characters, non-ASCII, U+2028), times with and without
// fractions and zones, and after bytes already in the buffer.
func TestAppendEnvelopeIsTheJSONEncoding(t *testing.T) {
	times := []time.Time{
		time.Date(2026, 12, 3, 13, 40, 1, 0, time.UTC),
		time.Date(2026, 12, 3, 13, 40, 1, 123456789, time.UTC),
		time.Date(2026, 12, 3, 13, 40, 1, 120000000, time.FixedZone("x", 3600+1800)),
		{},
	}
	texts := []string{"m-1", "0192a4c2-7b1e-7c3d-9a8b-1234567890ab", "", `a"b`, `a\b`, "<script>", "a&b", "a>b", "tab\there", "é", "line\u2028sep", "\x7f"}
	var evs []events.Published
	for _, at := range times {
		for _, s := range texts {
			evs = append(evs,
				events.NewMessageDelivered(s, "user-1", 2, at),
				events.NewMessageDelivered("m", s, 1, at),
				events.MessageDelivered{EventID: s, MessageID: "m", UserID: "u", Connections: -3, At: at},
				events.NewMessageUndeliverable(s, "u", events.UndeliverableOffline, at),
				events.MessageUndeliverable{EventID: "e", MessageID: "m", UserID: "u", Reason: events.UndeliverableReason(s), At: at},
				events.NewUserOnline(s, "c", at),
				events.NewUserOffline("u", at, at),
				events.NewUserOffline(s, at, time.Time{}),
			)
		}
	}
	for _, p := range evs {
		for _, at := range times {
			for _, where := range [][2]string{{events.Source, "local"}, {"000000000000", `r"<`}} {
				env, err := events.NewEnvelope(p, where[0], where[1], at)
				if err != nil {
					t.Fatal(err)
				}
				want, err := json.Marshal(env)
				if err != nil {
					t.Fatal(err)
				}
				got, err := events.AppendEnvelope([]byte("prefix"), p, where[0], where[1], at)
				if err != nil || !bytes.Equal(got, append([]byte("prefix"), want...)) {
					t.Fatalf("AppendEnvelope of %#v at %v:\n got %s (%v)\nwant prefix%s", p, at, got, err, want)
				}
			}
		}
	}
}
