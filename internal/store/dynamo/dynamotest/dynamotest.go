// Package dynamotest gives tests a DynamoDB to talk to and a stand-in for DynamoDB
// Streams. The database is dynalite (a DynamoDB emulator from npm) at the endpoint in
// WSPRESENCE_DYNAMODB_ENDPOINT; tests skip when it is not set (.ci/run starts dynalite
// and sets it). dynalite has no streams, so Stream builds the records a stream would carry
// from the items the store wrote.
package dynamotest

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go/middleware"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

// EndpointEnv names the variable holding dynalite's endpoint.
const EndpointEnv = "WSPRESENCE_DYNAMODB_ENDPOINT"

// Endpoint returns dynalite's endpoint, skipping t when none is configured.
func Endpoint(t testing.TB) string {
	t.Helper()
	ep := os.Getenv(EndpointEnv)
	if ep == "" {
		t.Skipf("%s is not set: start dynalite (npx dynalite --port 8000 --createTableMs 0) and set it; .ci/run does", EndpointEnv)
	}
	return ep
}

// Client returns a client of dynalite.
func Client(t testing.TB) *dynamodb.Client {
	t.Helper()
	cfg := awsfake.Config(Endpoint(t))
	cfg.Retryer = nil
	return dynamodb.NewFromConfig(cfg)
}

var counter atomic.Int64

var unsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// NewTables creates a fresh pair of tables for t.
func NewTables(t testing.TB, db *dynamodb.Client) dynamo.Tables {
	t.Helper()
	base := unsafe.ReplaceAllString(t.Name(), "-")
	if len(base) > 180 {
		base = base[:180]
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatInt(counter.Add(1), 10)
	tables := dynamo.Tables{Events: "ev-" + base + "-" + suffix, View: "vw-" + base + "-" + suffix}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dynamo.CreateTables(ctx, db, tables); err != nil {
		t.Fatal(err)
	}
	return tables
}

// Stream stands in for the event table's stream: Next returns a record for every item
// written since the last call, in the order a scan finds them.
type Stream struct {
	db    *dynamodb.Client
	table string
	seen  map[string]bool
	seq   int64
}

// NewStream returns a Stream over the event table.
func NewStream(db *dynamodb.Client, table string) *Stream {
	return &Stream{db: db, table: table, seen: map[string]bool{}}
}

// Next returns the records of the items written since the last call.
func (s *Stream) Next(t testing.TB) []lambdaevents.DynamoDBEventRecord {
	t.Helper()
	var out []lambdaevents.DynamoDBEventRecord
	var start map[string]types.AttributeValue
	for {
		page, err := s.db.Scan(context.Background(), &dynamodb.ScanInput{TableName: aws.String(s.table), ExclusiveStartKey: start, ConsistentRead: aws.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range page.Items {
			key := item["pk"].(*types.AttributeValueMemberS).Value
			if s.seen[key] {
				continue
			}
			s.seen[key] = true
			s.seq++
			out = append(out, Record(item, s.seq))
		}
		if page.LastEvaluatedKey == nil {
			return out
		}
		start = page.LastEvaluatedKey
	}
}

// Record builds the INSERT stream record (NEW_IMAGE) of an event table item.
func Record(item map[string]types.AttributeValue, seq int64) lambdaevents.DynamoDBEventRecord {
	img := map[string]lambdaevents.DynamoDBAttributeValue{}
	for k, v := range item {
		if sv, ok := v.(*types.AttributeValueMemberS); ok {
			img[k] = lambdaevents.NewStringAttribute(sv.Value)
		}
	}
	return lambdaevents.DynamoDBEventRecord{
		AWSRegion:      "us-east-1",
		EventID:        fmt.Sprintf("event-%d", seq),
		EventName:      string(lambdaevents.DynamoDBOperationTypeInsert),
		EventSource:    "aws:dynamodb",
		EventVersion:   "1.1",
		EventSourceArn: "arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2026-01-01T00:00:00.000",
		Change: lambdaevents.DynamoDBStreamRecord{
			Keys:           map[string]lambdaevents.DynamoDBAttributeValue{"pk": img["pk"]},
			NewImage:       img,
			SequenceNumber: fmt.Sprintf("%021d", seq),
			SizeBytes:      100,
			StreamViewType: string(lambdaevents.DynamoDBStreamViewTypeNewImage),
		},
	}
}

// ViewStream stands in for the view table's stream: it records every user item the store
// writes (a successful PutItem), in the order the writes completed, as the MODIFY records
// (NEW_IMAGE) the stream would carry.
type ViewStream struct {
	mu      sync.Mutex
	records []lambdaevents.DynamoDBEventRecord
	seq     int64
	// Clock, if set, stamps each record's ApproximateCreationDateTime.
	Clock func() time.Time
}

// ClientWithViewStream returns a client of dynalite whose user-item writes are recorded.
func ClientWithViewStream(t testing.TB) (*dynamodb.Client, *ViewStream) {
	t.Helper()
	cfg := awsfake.Config(Endpoint(t))
	cfg.Retryer = nil
	vs := &ViewStream{}
	db := dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("viewStream",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					out, md, err := next.HandleInitialize(ctx, in)
					if p, ok := in.Parameters.(*dynamodb.PutItemInput); ok && err == nil {
						if sk, ok := p.Item["sk"].(*types.AttributeValueMemberS); ok && sk.Value == "#USER" {
							vs.add(p.Item)
						}
					}
					return out, md, err
				}), middleware.After)
		})
	})
	return db, vs
}

func (v *ViewStream) add(item map[string]types.AttributeValue) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seq++
	rec := ViewRecord(item, v.seq)
	if v.Clock != nil {
		rec.Change.ApproximateCreationDateTime = lambdaevents.SecondsEpochTime{Time: v.Clock()}
	}
	v.records = append(v.records, rec)
}

// All returns every record written so far (what the stream keeps), delivered or not.
func (v *ViewStream) All() []lambdaevents.DynamoDBEventRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.records)
}

// ViewRecord is the MODIFY record (NEW_IMAGE) the view table's stream carries for a write
// of item, at sequence number seq.
func ViewRecord(item map[string]types.AttributeValue, seq int64) lambdaevents.DynamoDBEventRecord {
	img := Image(item)
	return lambdaevents.DynamoDBEventRecord{
		AWSRegion: "us-east-1", EventID: fmt.Sprintf("view-%d", seq), EventName: string(lambdaevents.DynamoDBOperationTypeModify),
		EventSource: "aws:dynamodb", EventVersion: "1.1",
		EventSourceArn: "arn:aws:dynamodb:us-east-1:123456789012:table/view/stream/2026-01-01T00:00:00.000",
		Change: lambdaevents.DynamoDBStreamRecord{
			Keys:     map[string]lambdaevents.DynamoDBAttributeValue{"pk": img["pk"], "sk": img["sk"]},
			NewImage: img, SequenceNumber: fmt.Sprintf("%021d", seq), SizeBytes: 100,
			StreamViewType: string(lambdaevents.DynamoDBStreamViewTypeNewImage),
		},
	}
}

// Next returns the records of the writes since the last call; the stream keeps none of
// them after it.
func (v *ViewStream) Next() []lambdaevents.DynamoDBEventRecord {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := v.records
	v.records = nil
	return out
}

// Image converts an item to the attribute values of a stream record's image.
func Image(item map[string]types.AttributeValue) map[string]lambdaevents.DynamoDBAttributeValue {
	img := make(map[string]lambdaevents.DynamoDBAttributeValue, len(item))
	for k, v := range item {
		img[k] = attribute(v)
	}
	return img
}

func attribute(v types.AttributeValue) lambdaevents.DynamoDBAttributeValue {
	switch x := v.(type) {
	case *types.AttributeValueMemberS:
		return lambdaevents.NewStringAttribute(x.Value)
	case *types.AttributeValueMemberN:
		return lambdaevents.NewNumberAttribute(x.Value)
	case *types.AttributeValueMemberSS:
		return lambdaevents.NewStringSetAttribute(x.Value)
	case *types.AttributeValueMemberBOOL:
		return lambdaevents.NewBooleanAttribute(x.Value)
	case *types.AttributeValueMemberM:
		return lambdaevents.NewMapAttribute(Image(x.Value))
	case *types.AttributeValueMemberL:
		l := make([]lambdaevents.DynamoDBAttributeValue, len(x.Value))
		for i, e := range x.Value {
			l[i] = attribute(e)
		}
		return lambdaevents.NewListAttribute(l)
	}
	return lambdaevents.NewNullAttribute()
}
