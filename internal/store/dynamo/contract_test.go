package dynamo_test

import (
	"context"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/projector"
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
	graces    []storetest.Grace
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
	r.graces = append(r.graces, storetest.Grace{UserID: userID, Since: since})
	return nil
}

func (r *recorder) take() ([]events.Published, []storetest.Grace) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, g := r.published, r.graces
	r.published, r.graces = nil, nil
	return p, g
}

type fakeErr struct{}

func (fakeErr) Error() string { return "injected failure" }

var errFake = fakeErr{}

type rig struct {
	store   *dynamo.Store
	stream  *dynamotest.Stream
	rec     *recorder
	handler *projector.Handler
}

func newRig(t *testing.T) *rig {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	rec := &recorder{}
	return &rig{store: st, stream: dynamotest.NewStream(db, tables.Events), rec: rec,
		handler: &projector.Handler{View: st, Publisher: rec, Grace: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}
}

func (r *rig) handle(t *testing.T, recs []lambdaevents.DynamoDBEventRecord) lambdaevents.DynamoDBEventResponse {
	t.Helper()
	resp, err := r.handler.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: recs})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestContract runs the store contract against the DynamoDB store, with the projector fed
// the stream records of what the store wrote.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		r := newRig(t)
		return storetest.Harness{
			Store: r.store,
			Project: func(t *testing.T) ([]events.Published, []storetest.Grace) {
				if resp := r.handle(t, r.stream.Next(t)); len(resp.BatchItemFailures) > 0 {
					t.Fatalf("batch item failures %+v", resp.BatchItemFailures)
				}
				return r.rec.take()
			},
			ExpireGrace: func(t *testing.T, userID string, since time.Time) []events.Published {
				off, ok, err := r.store.ExpireGrace(context.Background(), userID, since)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					return nil
				}
				return []events.Published{off}
			},
		}
	})
}
