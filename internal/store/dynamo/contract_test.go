package dynamo_test

import (
	"context"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
	"github.com/wspresence/wspresence/internal/storetest"
	"io"
	"log/slog"
)

// recorder is a hand-written publisher and grace starter that keeps what it was given.
type recorder struct {
	mu        sync.Mutex
	published []events.Published
	graces    []presence.Grace
	failNext  int
}

func (r *recorder) Publish(_ context.Context, evs ...events.Published) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failNext > 0 {
		r.failNext--
		return errFake
	}
	r.published = append(r.published, evs...)
	return nil
}

func (r *recorder) StartGrace(_ context.Context, userID string, since time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.graces = append(r.graces, presence.Grace{UserID: userID, Since: since})
	return nil
}

func (r *recorder) take() ([]events.Published, []presence.Grace) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, g := r.published, r.graces
	r.published, r.graces = nil, nil
	return p, g
}

type fakeErr struct{}

func (fakeErr) Error() string { return "injected failure" }

var errFake = fakeErr{}

const testGrace = 5 * time.Second

// rig is the DynamoDB store with its two stream consumers: the projector, fed the event
// table's records, and the outbox relay, fed the view table's.
type rig struct {
	store     *dynamo.Store
	stream    *dynamotest.Stream
	view      *dynamotest.ViewStream
	rec       *recorder
	handler   *projector.Handler
	publisher *publisher.Handler
}

func newRig(t *testing.T) *rig {
	db, view := dynamotest.ClientWithViewStream(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	st.Grace = testGrace
	rec := &recorder{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &rig{store: st, stream: dynamotest.NewStream(db, tables.Events), view: view, rec: rec,
		handler:   &projector.Handler{View: st, Grace: rec, Logger: quiet},
		publisher: &publisher.Handler{Publisher: rec, Sticker: st, Logger: quiet}}
}

func (r *rig) handle(t *testing.T, recs []lambdaevents.DynamoDBEventRecord) lambdaevents.DynamoDBEventResponse {
	t.Helper()
	resp, err := r.handler.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: recs})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// relay runs the outbox relay over the view table's new records and fails t on a failure.
func (r *rig) relay(t *testing.T) {
	t.Helper()
	resp, err := r.publisher.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: r.view.Next()})
	if err != nil || len(resp.BatchItemFailures) > 0 {
		t.Fatalf("outbox relay: %+v, %v", resp.BatchItemFailures, err)
	}
}

// The DynamoDB store implements the contract's port with its signatures.
var _ storetest.Store = (*dynamo.Store)(nil)

// TestContract runs the store contract against the DynamoDB store: the projector is fed
// the stream records of what the store appended, and what is published goes through the
// outbox relay fed the view table's writes.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		r := newRig(t)
		return storetest.Harness{
			Store: r.store,
			Grace: testGrace,
			Project: func(t *testing.T) ([]events.Published, []presence.Grace) {
				if resp := r.handle(t, r.stream.Next(t)); len(resp.BatchItemFailures) > 0 {
					t.Fatalf("batch item failures %+v", resp.BatchItemFailures)
				}
				r.relay(t)
				return r.rec.take()
			},
			Published: func(t *testing.T) []events.Published {
				r.relay(t)
				p, _ := r.rec.take()
				return p
			},
		}
	})
}
