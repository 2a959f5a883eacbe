// Package sqshold is the held-message timer of the AWS runtime: when a message for a
// user with a recovery stream reached no connection, one message on an SQS queue,
// delayed by the recovery window (DelaySeconds, so the window is at most 15 minutes),
// brings the message's position back to the sender at the window's end, which then
// reports MessageUndeliverable unless a recover replayed it meanwhile. A timer delivered
// twice decides nothing the second time (the outcome is claimed with a conditional
// write). A Starter is safe for concurrent use.
package sqshold

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// MaxWindow is the longest delay SQS gives a message, hence the longest recovery window.
const MaxWindow = 15 * time.Minute

// Timer is the body of a held message's timer: where the message is in its user's
// stream.
type Timer struct {
	UserID    string `json:"userId"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	MessageID string `json:"messageId"`
}

// Decode reads a timer's body.
func Decode(body string) (Timer, error) {
	var t Timer
	if err := json.Unmarshal([]byte(body), &t); err != nil || t.UserID == "" || t.Epoch == "" || t.Offset < 1 {
		return Timer{}, fmt.Errorf("not a held-message timer: %q", body)
	}
	return t, nil
}

// Starter sends the timers of one queue.
type Starter struct {
	client *sqs.Client
	url    string
	delay  time.Duration
}

// New returns a Starter of the queue at url whose timers wait window (at most MaxWindow).
func New(client *sqs.Client, queueURL string, window time.Duration) *Starter {
	return &Starter{client: client, url: queueURL, delay: min(window, MaxWindow)}
}

// Hold sends the timer of a held message, due at the window's end.
func (s *Starter) Hold(ctx context.Context, t Timer) error {
	body, err := json.Marshal(t)
	if err != nil {
		return err
	}
	_, err = s.client.SendMessage(ctx, &sqs.SendMessageInput{
		QueueUrl:     aws.String(s.url),
		MessageBody:  aws.String(string(body)),
		DelaySeconds: int32((s.delay + time.Second - 1) / time.Second),
	})
	if err != nil {
		return awsfail.Wrap(fmt.Sprintf("hold message %s of %s", t.MessageID, t.UserID), err)
	}
	return nil
}
