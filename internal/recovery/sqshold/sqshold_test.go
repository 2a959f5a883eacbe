package sqshold_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/recovery/sqshold"
)

// A held message's timer is one message delayed by the window (rounded up to the second),
// carrying the message's position, which Decode reads back.
func TestHold(t *testing.T) {
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		var in struct{ MessageBody string }
		_ = json.Unmarshal(r.Body, &in)
		sum := md5.Sum([]byte(in.MessageBody))
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "m", "MD5OfMessageBody": hex.EncodeToString(sum[:])})
	})
	const url = "https://sqs.us-east-1.amazonaws.com/123456789012/held"
	s := sqshold.New(sqs.NewFromConfig(srv.Config()), url, 90500*time.Millisecond)
	want := sqshold.Timer{UserID: "u", Epoch: "e", Offset: 7, MessageID: "m-1"}
	if err := s.Hold(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	var in struct {
		QueueUrl, MessageBody string
		DelaySeconds          int
	}
	req := srv.Requests()[0]
	req.Decode(t, &in)
	if req.Target != "AmazonSQS.SendMessage" || in.QueueUrl != url || in.DelaySeconds != 91 {
		t.Fatalf("request %s %+v", req.Target, in)
	}
	got, err := sqshold.Decode(in.MessageBody)
	if err != nil || got != want {
		t.Fatalf("decoded %+v %v", got, err)
	}
	for _, bad := range []string{"", "{}", `{"userId":"u","epoch":"e","offset":0}`, `{"UserId":"u","Body":"x"}`} {
		if _, err := sqshold.Decode(bad); err == nil {
			t.Errorf("%q decoded as a timer", bad)
		}
	}
}
