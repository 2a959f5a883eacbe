package dynamo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

type keys struct {
	Keys []map[string]map[string]string
}

// TestUsersChunksAndRetriesUnprocessedKeys: BatchGetItem takes at most 100 keys, and keys
// DynamoDB leaves unprocessed are asked again until answered.
func TestUsersChunksAndRetriesUnprocessedKeys(t *testing.T) {
	var sizes []int
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		if r.Target != "DynamoDB_20120810.BatchGetItem" {
			t.Errorf("unexpected call %s", r.Target)
		}
		var in struct{ RequestItems map[string]keys }
		_ = json.Unmarshal(r.Body, &in)
		ks := in.RequestItems["view"].Keys
		sizes = append(sizes, len(ks))
		// Answer the first half, leave the rest unprocessed.
		half := (len(ks) + 1) / 2
		var items []map[string]any
		for _, k := range ks[:half] {
			items = append(items, map[string]any{"pk": map[string]string{"S": k["pk"]["S"]}, "live": map[string][]string{"SS": {"c"}}})
		}
		out := map[string]any{"Responses": map[string]any{"view": items}}
		if len(ks) > half {
			out["UnprocessedKeys"] = map[string]any{"view": map[string]any{"Keys": ks[half:]}}
		}
		return awsfake.JSON(http.StatusOK, out)
	})
	st := dynamo.New(dynamodb.NewFromConfig(srv.Config()), dynamo.Tables{Events: "events", View: "view"})
	ids := make([]string, 150)
	for i := range ids {
		ids[i] = fmt.Sprintf("u%03d", i)
	}
	got, err := st.Users(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range got {
		if u.UserID != ids[i] || u.Connections != 1 {
			t.Fatalf("answer %d = %+v", i, u)
		}
	}
	if sizes[0] != 100 {
		t.Fatalf("first call asked %d keys, want 100", sizes[0])
	}
	total := 0
	for _, s := range sizes {
		if s > 100 {
			t.Fatalf("a call asked %d keys", s)
		}
		total += s
	}
	// 100 → 50 → 25 → 13 → 7 → 4 → 2 → 1 for the first chunk, the same from 50 for the second.
	if len(sizes) < 4 || total <= 150 {
		t.Fatalf("calls %v: unprocessed keys were not retried", sizes)
	}
}

// TestThrottlingIsMappedToTheSentinel: a throttled DynamoDB call wraps failure.ErrThrottled.
func TestThrottlingIsMappedToTheSentinel(t *testing.T) {
	srv := awsfake.New(t, func(awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusBadRequest, "ProvisionedThroughputExceededException", "slow down")
	})
	st := dynamo.New(dynamodb.NewFromConfig(srv.Config()), dynamo.Tables{Events: "events", View: "view"})
	_, err := st.LiveConnections(context.Background(), "u")
	if !isThrottled(err) {
		t.Fatalf("err = %v", err)
	}
}

func isThrottled(err error) bool { return errors.Is(err, failure.ErrThrottled) }

// TestProjectorReportsThrottledRecords: DynamoDB throttling fails the record (a batch item
// failure, so Lambda retries it) and never the whole batch.
func TestProjectorReportsThrottledRecords(t *testing.T) {
	calls := 0
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		calls++
		if strings.Contains(string(r.Body), "u-throttled") {
			return awsfake.Error(http.StatusBadRequest, "ThrottlingException", "Rate of requests exceeds the allowed throughput.")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"Attributes": map[string]any{}})
	})
	st := dynamo.New(dynamodb.NewFromConfig(srv.Config()), dynamo.Tables{Events: "events", View: "view"})
	rec := &recorder{}
	h := &projector.Handler{View: st, Grace: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	records := []lambdaevents.DynamoDBEventRecord{
		dynamotest.Record(dynamo.EventItem(events.Opened("u-throttled", "c1", at, "", "")), 1),
		dynamotest.Record(dynamo.EventItem(events.Activity("u-fine", "c2", at)), 2),
	}
	resp, err := h.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: records})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != records[0].Change.SequenceNumber {
		t.Fatalf("failures %+v, want only the throttled record", resp.BatchItemFailures)
	}
}
