// Package sqsdelay is the offline grace timer of the AWS runtime: one message per offline
// period on an SQS queue, delayed until the period's deadline (DelaySeconds, at most 15
// minutes). The grace function consumes the queue and decides through the core at the
// deadline; a message delivered twice (standard queues deliver at least once) decides
// nothing the second time. A message costs one request to send and a share of the batched
// receives and deletes, about $0.50 per million offline periods against an Express
// execution's $6 (its wait is billed). A Starter is safe for concurrent use.
package sqsdelay

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// MaxDelay is the longest delay SQS gives a message.
const MaxDelay = 15 * time.Minute

// Input is the message body the grace function reads: the user, the start of the period
// (Unix nanoseconds, as a string: JSON numbers lose precision past 2^53) and its length.
type Input struct {
	UserID       string `json:"userId"`
	OfflineSince string `json:"offlineSince"`
	GraceSeconds int    `json:"graceSeconds"`
}

// Starter sends the timers of one queue.
type Starter struct {
	client *sqs.Client
	url    string
	grace  time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// New returns a Starter of the queue at url with the given grace period.
func New(client *sqs.Client, queueURL string, grace time.Duration) *Starter {
	return &Starter{client: client, url: queueURL, grace: grace}
}

// Delay is how long the timer of a period that began at since waits at now: until the
// period's deadline, rounded up to the second, at least 0 and at most MaxDelay.
func Delay(since, now time.Time, grace time.Duration) time.Duration {
	d := since.Add(grace).Sub(now)
	d = (d + time.Second - 1).Truncate(time.Second)
	return min(max(d, 0), MaxDelay)
}

// StartGrace sends the timer of userID's offline period that began at since, delayed to
// its deadline.
func (s *Starter) StartGrace(ctx context.Context, userID string, since time.Time) error {
	body, err := json.Marshal(Input{UserID: userID, OfflineSince: strconv.FormatInt(since.UnixNano(), 10),
		GraceSeconds: int((s.grace + time.Second - 1) / time.Second)})
	if err != nil {
		return err
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	_, err = s.client.SendMessage(ctx, &sqs.SendMessageInput{
		QueueUrl:     aws.String(s.url),
		MessageBody:  aws.String(string(body)),
		DelaySeconds: int32(Delay(since, now(), s.grace) / time.Second),
	})
	if err != nil {
		return awsfail.Wrap(fmt.Sprintf("start grace of %s", userID), err)
	}
	return nil
}

// Dead is a timer that failed every receive and waits in the dead-letter queue.
type Dead struct {
	Input
	// Receipt deletes it once handled.
	Receipt string
}

// DeadLetters reads the grace queue's dead-letter queue. It is safe for concurrent use.
type DeadLetters struct {
	client *sqs.Client
	url    string
}

// NewDeadLetters returns the reader of the dead-letter queue at url.
func NewDeadLetters(client *sqs.Client, queueURL string) *DeadLetters {
	return &DeadLetters{client: client, url: queueURL}
}

// Receive takes at most limit timers off the queue, hidden from other readers for hide
// (rounded up to the second: the reader's whole run; a timer not deleted comes back
// after). A message that is not a timer is returned with an empty UserID, to be deleted.
func (d *DeadLetters) Receive(ctx context.Context, limit int, hide time.Duration) ([]Dead, error) {
	var out []Dead
	for len(out) < limit {
		res, err := d.client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(d.url),
			MaxNumberOfMessages: int32(min(10, limit-len(out))),
			VisibilityTimeout:   int32(min(max((hide+time.Second-1)/time.Second, 1), 12*time.Hour/time.Second))})
		if err != nil {
			return out, awsfail.Wrap("receive dead grace timers", err)
		}
		if len(res.Messages) == 0 {
			return out, nil
		}
		for _, m := range res.Messages {
			var in Input
			_ = json.Unmarshal([]byte(aws.ToString(m.Body)), &in)
			out = append(out, Dead{Input: in, Receipt: aws.ToString(m.ReceiptHandle)})
		}
	}
	return out, nil
}

// Delete removes a handled timer.
func (d *DeadLetters) Delete(ctx context.Context, receipt string) error {
	if _, err := d.client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(d.url), ReceiptHandle: aws.String(receipt)}); err != nil {
		return awsfail.Wrap("delete a dead grace timer", err)
	}
	return nil
}
