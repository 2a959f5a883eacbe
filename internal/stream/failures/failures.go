// Package failures reads the stream failure queue: the on-failure destination of the
// DynamoDB stream event source mappings, where Lambda sends the position of each batch it
// gave up on (after its retries), not the records. A Queue is safe for concurrent use.
package failures

import (
	"context"
	"encoding/json"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// Batch is the position of a batch given up on, as the invocation record carries it.
type Batch struct {
	ShardID             string    `json:"shardId"`
	StartSequenceNumber string    `json:"startSequenceNumber"`
	EndSequenceNumber   string    `json:"endSequenceNumber"`
	FirstArrival        time.Time `json:"approximateArrivalOfFirstRecord"`
	BatchSize           int       `json:"batchSize"`
	StreamARN           string    `json:"streamArn"`
	// Receipt deletes the message once handled.
	Receipt string `json:"-"`
}

// Queue reads the failure queue.
type Queue struct {
	client *sqs.Client
	url    string
}

// New returns the reader of the queue at url.
func New(client *sqs.Client, queueURL string) *Queue { return &Queue{client: client, url: queueURL} }

// Receive takes at most limit batch positions off the queue, hidden from other readers for
// hide (rounded up to the second: the reader's whole run, so that none comes back while
// it still works on it; one not deleted comes back after). A message that is not a
// stream batch's record is returned with an empty StreamARN, to be deleted.
func (q *Queue) Receive(ctx context.Context, limit int, hide time.Duration) ([]Batch, error) {
	var out []Batch
	for len(out) < limit {
		res, err := q.client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(q.url),
			MaxNumberOfMessages: int32(min(10, limit-len(out))), VisibilityTimeout: seconds(hide)})
		if err != nil {
			return out, awsfail.Wrap("receive failed stream batches", err)
		}
		if len(res.Messages) == 0 {
			return out, nil
		}
		for _, m := range res.Messages {
			var rec struct {
				Info Batch `json:"DDBStreamBatchInfo"`
			}
			_ = json.Unmarshal([]byte(aws.ToString(m.Body)), &rec)
			rec.Info.Receipt = aws.ToString(m.ReceiptHandle)
			out = append(out, rec.Info)
		}
	}
	return out, nil
}

// Delete removes a handled batch.
func (q *Queue) Delete(ctx context.Context, receipt string) error {
	if _, err := q.client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(q.url), ReceiptHandle: aws.String(receipt)}); err != nil {
		return awsfail.Wrap("delete a failed stream batch", err)
	}
	return nil
}

// MaxHide is the longest an SQS message can be hidden (12 hours).
const MaxHide = 12 * time.Hour

// seconds is hide in whole seconds, rounded up, from 1 to MaxHide.
func seconds(hide time.Duration) int32 {
	return int32(min(max((hide+time.Second-1)/time.Second, 1), MaxHide/time.Second))
}
