// Package ddbstreams reads records of a DynamoDB stream by their position, so that a
// batch a Lambda event source mapping gave up on (its on-failure destination holds only
// the shard and the sequence numbers) can be replayed while the stream still keeps it (24
// hours), and so that a stream whose consumer does not run can be read in its place
// (Shards, After). A Reader is safe for concurrent use.
package ddbstreams

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodbstreams"
	"github.com/aws/aws-sdk-go-v2/service/dynamodbstreams/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// maxCalls bounds the GetRecords calls of one Records (an open shard may answer empty
// pages before the records asked for).
const maxCalls = 50

// Reader reads stream records.
type Reader struct {
	client *dynamodbstreams.Client
}

// New returns a Reader on client.
func New(client *dynamodbstreams.Client) *Reader { return &Reader{client: client} }

// Records returns the records of the shard from sequence number start to end, inclusive,
// as the Lambda event source mapping delivered them.
func (r *Reader) Records(ctx context.Context, streamARN, shardID, start, end string) ([]lambdaevents.DynamoDBEventRecord, error) {
	it, err := r.client.GetShardIterator(ctx, &dynamodbstreams.GetShardIteratorInput{StreamArn: aws.String(streamARN),
		ShardId: aws.String(shardID), ShardIteratorType: types.ShardIteratorTypeAtSequenceNumber, SequenceNumber: aws.String(start)})
	if err != nil {
		return nil, awsfail.Wrap("position in "+shardID, err)
	}
	var out []lambdaevents.DynamoDBEventRecord
	iter := it.ShardIterator
	for calls := 0; iter != nil && calls < maxCalls; calls++ {
		page, err := r.client.GetRecords(ctx, &dynamodbstreams.GetRecordsInput{ShardIterator: iter})
		if err != nil {
			return out, awsfail.Wrap("read "+shardID, err)
		}
		for _, rec := range page.Records {
			seq := aws.ToString(rec.Dynamodb.SequenceNumber)
			if Compare(seq, end) > 0 {
				return out, nil
			}
			out = append(out, convert(streamARN, rec))
			if Compare(seq, end) == 0 {
				return out, nil
			}
		}
		iter = page.NextShardIterator
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read %s from %s: no record (expired?)", shardID, start)
	}
	return out, nil
}

// Shards lists the ids of the stream's shards, open and closed (DescribeStream, paged).
func (r *Reader) Shards(ctx context.Context, streamARN string) ([]string, error) {
	var out []string
	var start *string
	for {
		page, err := r.client.DescribeStream(ctx, &dynamodbstreams.DescribeStreamInput{StreamArn: aws.String(streamARN), ExclusiveStartShardId: start})
		if err != nil {
			return out, awsfail.Wrap("describe "+streamARN, err)
		}
		if page.StreamDescription == nil {
			return out, nil
		}
		for _, sh := range page.StreamDescription.Shards {
			out = append(out, aws.ToString(sh.ShardId))
		}
		start = page.StreamDescription.LastEvaluatedShardId
		if start == nil {
			return out, nil
		}
	}
}

// After returns at most limit records of the shard after the sequence number after (from
// the oldest the stream keeps when after is empty, or no longer kept), and the position to
// go on from: the last record's sequence number, or after when there was none.
func (r *Reader) After(ctx context.Context, streamARN, shardID, after string, limit int) ([]lambdaevents.DynamoDBEventRecord, string, error) {
	in := &dynamodbstreams.GetShardIteratorInput{StreamArn: aws.String(streamARN), ShardId: aws.String(shardID),
		ShardIteratorType: types.ShardIteratorTypeTrimHorizon}
	if after != "" {
		in.ShardIteratorType, in.SequenceNumber = types.ShardIteratorTypeAfterSequenceNumber, aws.String(after)
	}
	it, err := r.client.GetShardIterator(ctx, in)
	var trimmed *types.TrimmedDataAccessException
	if errors.As(err, &trimmed) {
		in.ShardIteratorType, in.SequenceNumber = types.ShardIteratorTypeTrimHorizon, nil
		it, err = r.client.GetShardIterator(ctx, in)
	}
	if err != nil {
		return nil, after, awsfail.Wrap("position in "+shardID, err)
	}
	var out []lambdaevents.DynamoDBEventRecord
	next := after
	iter := it.ShardIterator
	for calls := 0; iter != nil && calls < maxCalls && len(out) < limit; calls++ {
		page, err := r.client.GetRecords(ctx, &dynamodbstreams.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(int32(min(limit-len(out), 1000)))})
		if err != nil {
			return out, next, awsfail.Wrap("read "+shardID, err)
		}
		for _, rec := range page.Records {
			out = append(out, convert(streamARN, rec))
			next = aws.ToString(rec.Dynamodb.SequenceNumber)
		}
		if len(page.Records) == 0 {
			break // the shard's end, as far as it is written
		}
		iter = page.NextShardIterator
	}
	return out, next, nil
}

// Compare orders two sequence numbers (decimal strings of any length).
func Compare(a, b string) int {
	x, okx := new(big.Int).SetString(strings.TrimSpace(a), 10)
	y, oky := new(big.Int).SetString(strings.TrimSpace(b), 10)
	if !okx || !oky {
		return strings.Compare(a, b)
	}
	return x.Cmp(y)
}

func convert(streamARN string, r types.Record) lambdaevents.DynamoDBEventRecord {
	out := lambdaevents.DynamoDBEventRecord{AWSRegion: aws.ToString(r.AwsRegion), EventID: aws.ToString(r.EventID),
		EventName: string(r.EventName), EventSource: aws.ToString(r.EventSource), EventVersion: aws.ToString(r.EventVersion),
		EventSourceArn: streamARN}
	if d := r.Dynamodb; d != nil {
		out.Change = lambdaevents.DynamoDBStreamRecord{Keys: image(d.Keys), NewImage: image(d.NewImage), OldImage: image(d.OldImage),
			SequenceNumber: aws.ToString(d.SequenceNumber), SizeBytes: aws.ToInt64(d.SizeBytes), StreamViewType: string(d.StreamViewType)}
		if d.ApproximateCreationDateTime != nil {
			out.Change.ApproximateCreationDateTime = lambdaevents.SecondsEpochTime{Time: *d.ApproximateCreationDateTime}
		}
	}
	return out
}

func image(item map[string]types.AttributeValue) map[string]lambdaevents.DynamoDBAttributeValue {
	if item == nil {
		return nil
	}
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
	case *types.AttributeValueMemberB:
		return lambdaevents.NewBinaryAttribute(x.Value)
	case *types.AttributeValueMemberSS:
		return lambdaevents.NewStringSetAttribute(x.Value)
	case *types.AttributeValueMemberNS:
		return lambdaevents.NewNumberSetAttribute(x.Value)
	case *types.AttributeValueMemberBOOL:
		return lambdaevents.NewBooleanAttribute(x.Value)
	case *types.AttributeValueMemberM:
		return lambdaevents.NewMapAttribute(image(x.Value))
	case *types.AttributeValueMemberL:
		l := make([]lambdaevents.DynamoDBAttributeValue, len(x.Value))
		for i, e := range x.Value {
			l[i] = attribute(e)
		}
		return lambdaevents.NewListAttribute(l)
	}
	return lambdaevents.NewNullAttribute()
}
