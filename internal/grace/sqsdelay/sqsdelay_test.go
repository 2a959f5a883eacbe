package sqsdelay_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
)

const url = "https://sqs.us-east-1.amazonaws.com/123456789012/grace"

// The timer is one message, delayed to the period's deadline as seen when it is sent
// (a close folded late waits less), carrying the period for the grace function.
func TestStartGrace(t *testing.T) {
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		var in struct{ MessageBody string }
		_ = json.Unmarshal(r.Body, &in)
		sum := md5.Sum([]byte(in.MessageBody))
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "m", "MD5OfMessageBody": hex.EncodeToString(sum[:])})
	})
	since := time.Date(2026, 1, 1, 0, 0, 1, 500, time.UTC)
	s := sqsdelay.New(sqs.NewFromConfig(srv.Config()), url, 5*time.Second)
	s.Now = func() time.Time { return since.Add(1500 * time.Millisecond) }
	if err := s.StartGrace(context.Background(), "user-1", since); err != nil {
		t.Fatal(err)
	}
	reqs := srv.Requests()
	var in struct {
		QueueUrl, MessageBody string
		DelaySeconds          int
	}
	reqs[0].Decode(t, &in)
	if reqs[0].Target != "AmazonSQS.SendMessage" || in.QueueUrl != url || in.DelaySeconds != 4 {
		t.Fatalf("request %s %+v, want a delay of 4 s (3.5 s left, rounded up)", reqs[0].Target, in)
	}
	var body sqsdelay.Input
	if err := json.Unmarshal([]byte(in.MessageBody), &body); err != nil || body.UserID != "user-1" || body.OfflineSince != "1767225601000000500" ||
		body.GraceSeconds != 5 {
		t.Fatalf("body %s", in.MessageBody)
	}
	for _, c := range []struct {
		late time.Duration
		want time.Duration
	}{{0, 5 * time.Second}, {10 * time.Second, 0}, {-time.Hour, sqsdelay.MaxDelay}} {
		if got := sqsdelay.Delay(since, since.Add(c.late), 5*time.Second); got != c.want {
			t.Errorf("Delay %v late = %v, want %v", c.late, got, c.want)
		}
	}
}

func TestStartGraceThrottled(t *testing.T) {
	srv := awsfake.New(t, func(awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusBadRequest, "ThrottlingException", "slow down")
	})
	s := sqsdelay.New(sqs.NewFromConfig(srv.Config()), url, 5*time.Second)
	if err := s.StartGrace(context.Background(), "u", time.Now()); !errors.Is(err, failure.ErrThrottled) {
		t.Fatalf("err = %v, want ErrThrottled", err)
	}
}
