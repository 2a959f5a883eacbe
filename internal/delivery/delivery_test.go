package delivery_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
)

type fakeView map[string][]string

func (f fakeView) LiveConnections(_ context.Context, uid string) ([]string, error) {
	return f[uid], nil
}

// fakePoster answers per connection: nil, ErrConnectionGone or another error.
type fakePoster struct {
	mu     sync.Mutex
	answer map[string]error
	got    map[string]string
}

func (f *fakePoster) Post(_ context.Context, id string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.got == nil {
		f.got = map[string]string{}
	}
	f.got[id] = string(data)
	return f.answer[id]
}

type fakeLog struct{ evs []events.ConnectionEvent }

func (f *fakeLog) Append(_ context.Context, evs ...events.ConnectionEvent) (int, error) {
	f.evs = append(f.evs, evs...)
	return len(evs), nil
}

var now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestOutcomes(t *testing.T) {
	view := fakeView{"a": {"a1", "a2", "a3"}, "g": {"g1", "g2"}, "f": {"f1", "f2"}}
	poster := &fakePoster{answer: map[string]error{
		"a2": delivery.ErrConnectionGone, "g1": delivery.ErrConnectionGone,
		"g2": &delivery.GoneError{Reason: events.ReasonExpired, Err: errors.New("send queue full")},
		"f1": errors.New("throttled"), "f2": delivery.ErrConnectionGone,
	}}
	log := &fakeLog{}
	d := &delivery.Deliverer{Connections: view, Poster: poster, Log: log, Now: func() time.Time { return now }}
	ctx := context.Background()

	res, err := d.Deliver(ctx, "m1", "a", "hello")
	if err != nil {
		t.Fatal(err)
	}
	del, ok := res.Outcome.(events.MessageDelivered)
	if !ok || del.Connections != 2 || del.MessageID != "m1" || del.UserID != "a" {
		t.Fatalf("outcome %+v", res.Outcome)
	}
	if poster.got["a1"] != "hello" || poster.got["a3"] != "hello" {
		t.Fatalf("posted %v", poster.got)
	}
	if len(log.evs) != 1 || log.evs[0].ConnectionID != "a2" || log.evs[0].Reason != events.ReasonGone {
		t.Fatalf("recorded %+v", log.evs)
	}

	res, err = d.Deliver(ctx, "m2", "nobody", "x")
	if u, ok := res.Outcome.(events.MessageUndeliverable); err != nil || !ok || u.Reason != events.UndeliverableOffline {
		t.Fatalf("offline: %+v %v", res.Outcome, err)
	}
	res, err = d.Deliver(ctx, "m3", "g", "x")
	if u, ok := res.Outcome.(events.MessageUndeliverable); err != nil || !ok || u.Reason != events.UndeliverableGone {
		t.Fatalf("gone: %+v %v", res.Outcome, err)
	}
	reasons := map[string]events.CloseReason{}
	for _, e := range log.evs {
		reasons[e.ConnectionID] = e.Reason
	}
	if reasons["g1"] != events.ReasonGone || reasons["g2"] != events.ReasonExpired {
		t.Fatalf("close reasons %v: a poster's reason must be kept", reasons)
	}
	res, err = d.Deliver(ctx, "m4", "f", "x")
	if u, ok := res.Outcome.(events.MessageUndeliverable); !errors.Is(err, delivery.ErrDeliveryFailed) || !ok || u.Reason != events.UndeliverableFailed {
		t.Fatalf("failed: %+v %v", res.Outcome, err)
	}
}
