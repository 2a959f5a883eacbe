package events_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/schemas"
)

var at = time.Date(2026, 2, 3, 4, 5, 6, 789000000, time.UTC)

func TestPublishedEventsMatchTheirSchemas(t *testing.T) {
	for _, p := range []events.Published{
		events.NewUserOnline("u1", "c1", at),
		events.NewUserOffline("u1", at, at),
		events.NewUserOffline("u1", at, time.Time{}),
		events.NewMessageDelivered("m1", "u1", 2, at),
		events.NewMessageUndeliverable("m1", "u1", events.UndeliverableOffline, at),
	} {
		env, err := events.NewEnvelope(p, "123456789012", "eu-west-1", at)
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		schematest.CheckEnvelope(t, data)
		// Round trip: the envelope decodes to the same detail.
		var back events.Envelope
		if err := json.Unmarshal(data, &back); err != nil || back.ID != p.ID() || back.DetailType != p.DetailType() {
			t.Fatalf("round trip of %s: %+v %v", p.DetailType(), back, err)
		}
	}
}

func TestSchemasRejectWrongPayloads(t *testing.T) {
	env, _ := events.NewEnvelope(events.NewUserOnline("u1", "c1", at), "a", "r", at)
	data, _ := json.Marshal(env)
	bad := strings.Replace(string(data), `"UserOnline"`, `"UserOffline"`, 1)
	if schematest.Validate(schemas.UserOnline, []byte(bad)) == nil {
		t.Fatal("a UserOffline envelope validated as UserOnline")
	}
	if schematest.Validate(schemas.Message, []byte(`{"Body":"x"}`)) == nil {
		t.Fatal("a message without recipient validated")
	}
	if schematest.Validate(schemas.Message, []byte(`{"UserId":"u","Body":"x"}`)) != nil {
		t.Fatal("the original message shape does not validate")
	}
}

func TestEventIDsAreStable(t *testing.T) {
	a, b := events.NewUserOnline("u", "c", at), events.NewUserOnline("u", "c", at.Add(time.Hour))
	if a.EventID != b.EventID {
		t.Fatal("UserOnline id depends on time")
	}
	if events.NewUserOnline("u", "c2", at).EventID == a.EventID {
		t.Fatal("two connections' UserOnline share an id")
	}
	d, u := events.NewMessageDelivered("m", "u", 1, at), events.NewMessageUndeliverable("m", "u", events.UndeliverableGone, at)
	if d.EventID == u.EventID || d.EventID != events.NewMessageDelivered("m", "u", 3, at.Add(time.Second)).EventID {
		t.Fatal("message outcome ids are not stable per kind, message and user")
	}
}

// TestEventIDsAreVersion5UUIDs pins how an event id is derived: the SHA-1 UUID of the kind
// and the parts joined by NUL in the events' namespace, so that an outcome recorded again
// after an upgrade carries the id subscribers saw before it.
func TestEventIDsAreVersion5UUIDs(t *testing.T) {
	namespace := uuid.MustParse("6f1b7a54-3c1e-4d8a-9e55-0c8f3b6a2d91")
	long := strings.Repeat("x", 300) // past the stack buffer the id is hashed from
	for _, parts := range [][]string{nil, {""}, {"m-1", "u-1"}, {"u", "c"}, {long, "u"}, {"a\x00b", "é"}} {
		for _, kind := range []events.DetailType{events.DetailUserOnline, events.DetailMessageDelivered} {
			want := uuid.NewSHA1(namespace, []byte(string(kind)+"\x00"+strings.Join(parts, "\x00"))).String()
			if got := events.EventID(kind, parts...); got != want {
				t.Errorf("EventID(%s, %q) = %s, want %s", kind, parts, got, want)
			}
		}
	}
	if got := events.EventID(events.DetailMessageDelivered, "m-1", "u-1"); got != "2d3e8928-2341-563d-a4ff-a068fa934681" {
		t.Errorf("the MessageDelivered id of m-1 to u-1 changed: %s", got)
	}
}

func TestDecodeMessages(t *testing.T) {
	good := map[string][]events.Message{
		`{"UserId":"1234","Body":"hi"}`:                                                   {{UserID: "1234", Body: "hi"}},
		`{"userId":"1234","body":"hi","extra":{"x":1}}`:                                   {{UserID: "1234", Body: "hi"}},
		`[{"UserId":"a","Body":""},{"UserIds":["b","c","b"],"Body":"y","MessageId":"m"}]`: {{UserID: "a"}, {UserIDs: []string{"b", "c", "b"}, Body: "y", MessageID: "m"}},
	}
	for in, want := range good {
		got, err := events.DecodeMessages([]byte(in), 100)
		if err != nil || len(got) != len(want) {
			t.Fatalf("DecodeMessages(%s) = %+v, %v", in, got, err)
		}
		for i := range want {
			if got[i].UserID != want[i].UserID || got[i].Body != want[i].Body || got[i].MessageID != want[i].MessageID || len(got[i].UserIDs) != len(want[i].UserIDs) {
				t.Fatalf("DecodeMessages(%s)[%d] = %+v, want %+v", in, i, got[i], want[i])
			}
		}
		// The schema states the canonical (PascalCase) names; camelCase is a leniency.
		if !strings.Contains(in, `"userId"`) {
			schematest.Check(t, schemas.Message, []byte(in))
		}
	}
	if r := (events.Message{UserIDs: []string{"b", "c", "b"}}).Recipients(); len(r) != 2 {
		t.Fatalf("recipients not de-duplicated: %v", r)
	}
	many := make([]string, 101)
	for i := range many {
		many[i] = `"u"`
	}
	bad := map[string]string{
		``:                              "malformed",
		`{`:                             "malformed",
		`"text"`:                        "object",
		`{"Body":"x"}`:                  "UserId is required",
		`{"UserId":"","Body":"x"}`:      "empty",
		`{"UserId":123,"Body":"x"}`:     "UserId must be a string",
		`{"UserId":"a"}`:                "Body is required",
		`{"UserId":"a","Body":{"x":1}}`: "Body must be a string",
		`{"UserId":"a","UserIds":["b"],"Body":"x"}`:                                  "not both",
		`{"UserIds":[],"Body":"x"}`:                                                  "empty",
		`{"UserIds":[` + strings.Join(many, ",") + `],"Body":"x"}`:                   "at most 100",
		`{"UserId":"a","Body":"` + strings.Repeat("x", events.MaxBodyBytes+1) + `"}`: "at most 131072",
		`[]`: "empty",
		`[{"UserId":"a","Body":"x"},{"Body":"y"}]`: "message [1]",
		`{"UserId":"a","Body":"x"} {}`:             "trailing",
	}
	for in, want := range bad {
		_, err := events.DecodeMessages([]byte(in), 100)
		if !errors.Is(err, events.ErrInvalidMessage) || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeMessages(%.60s) = %v; want ErrInvalidMessage mentioning %q", in, err, want)
		}
	}
}

func TestConnectionEventKeysAndValidation(t *testing.T) {
	o := events.Opened("u", "c", at, "1.2.3.4", "ua")
	if o.Key() != events.Opened("u", "c", at.Add(time.Hour), "", "").Key() {
		t.Fatal("open key depends on more than the connection")
	}
	if events.Closed("u", "c", at, events.ReasonClient).Key() != events.Closed("u", "c", at, events.ReasonGone).Key() {
		t.Fatal("a connection could close twice")
	}
	if events.Activity("u", "c", at).Key() == events.Activity("u", "c", at.Add(time.Second)).Key() {
		t.Fatal("two activities share a key")
	}
	for _, e := range []events.ConnectionEvent{
		{Type: "X", UserID: "u", ConnectionID: "c", At: at},
		events.Closed("u", "c", at, "bogus"),
		events.Opened("", "c", at, "", ""),
		events.Opened("u", "", at, "", ""),
		events.Opened("u", "c", time.Time{}, "", ""),
	} {
		if err := e.Validate(); !errors.Is(err, events.ErrInvalidEvent) {
			t.Errorf("Validate(%+v) = %v", e, err)
		}
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
}
