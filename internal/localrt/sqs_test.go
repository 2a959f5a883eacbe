package localrt_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
)

// sqsClient is the AWS SDK's SQS client pointed at the local server, signing with secret
// as the secret access key.
func (ts *testServer) sqsClient(secret string) *sqs.Client {
	return sqs.New(sqs.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(ts.base),
		Credentials:  credentials.NewStaticCredentialsProvider("local", secret, ""),
	})
}

// An application that enqueues with the AWS SDK's SQS client enqueues on the local server
// exactly as in production: GetQueueUrl, SendMessage (the original {"UserId","Body"}
// shape) and SendMessageBatch with a bad entry reported per entry, as SQS does.
func TestSQSProtocolWithTheSDK(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	sub := ts.subscribe("0")
	c := ts.dial("sqs-user")
	other := ts.dial("sqs-other")
	waitFor(t, "online", func() bool {
		s, _ := ts.online("userIds=sqs-user,sqs-other")
		return s[0].IsOnline && s[1].IsOnline
	})
	ctx := context.Background()
	client := ts.sqsClient(testKey)

	url, err := client.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(localrt.QueueName)})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToString(url.QueueUrl); !strings.HasSuffix(got, "/"+localrt.QueueName) || !strings.Contains(got, strings.TrimPrefix(ts.base, "http://")) {
		t.Fatalf("queue URL %q", got)
	}
	_, err = client.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String("no-such-queue")})
	var missing *types.QueueDoesNotExist
	if !errors.As(err, &missing) {
		t.Fatalf("unknown queue: %v, want QueueDoesNotExist", err)
	}

	// SendMessage: the SDK checks the MD5 of the body it gets back.
	sent, err := client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: url.QueueUrl, MessageBody: aws.String(`{"UserId":"sqs-user","Body":"from the SDK"}`)})
	if err != nil {
		t.Fatal(err)
	}
	c.expectFrame(t, "from the SDK")
	waitFor(t, "MessageDelivered", func() bool {
		d := sub.of(events.DetailMessageDelivered, "sqs-user")
		return len(d) == 1 && d[0]["messageId"] == aws.ToString(sent.MessageId)
	})

	// SendMessageBatch: the good entries are enqueued, the bad one fails alone.
	batch, err := client.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: url.QueueUrl, Entries: []types.SendMessageBatchRequestEntry{
		{Id: aws.String("one"), MessageBody: aws.String(`{"UserId":"sqs-user","Body":"batch one","MessageId":"b-1"}`)},
		{Id: aws.String("bad"), MessageBody: aws.String(`{"UserId":"sqs-user"}`)},
		{Id: aws.String("two"), MessageBody: aws.String(`{"userId":"sqs-other","body":"batch two"}`)},
		{Id: aws.String("utf8"), MessageBody: aws.String(`{"UserId":"sqs-user","Body":"\ud800"}`)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(batch.Successful) != 2 || aws.ToString(batch.Successful[0].Id) != "one" || aws.ToString(batch.Successful[0].MessageId) != "b-1" ||
		aws.ToString(batch.Successful[1].Id) != "two" {
		t.Fatalf("successful %+v", batch.Successful)
	}
	if len(batch.Failed) != 2 || aws.ToString(batch.Failed[0].Id) != "bad" || !batch.Failed[0].SenderFault ||
		aws.ToString(batch.Failed[0].Code) != "InvalidMessageContents" || !strings.Contains(aws.ToString(batch.Failed[0].Message), "Body is required") ||
		aws.ToString(batch.Failed[1].Id) != "utf8" {
		t.Fatalf("failed %+v", batch.Failed)
	}
	c.expectFrame(t, "batch one")
	other.expectFrame(t, "batch two")

	// The batch's own errors: empty, too many, repeated ids.
	ten := make([]types.SendMessageBatchRequestEntry, 11)
	for i := range ten {
		ten[i] = types.SendMessageBatchRequestEntry{Id: aws.String(strings.Repeat("x", i+1)), MessageBody: aws.String(`{"UserId":"u","Body":"b"}`)}
	}
	dup := []types.SendMessageBatchRequestEntry{ten[0], ten[0]}
	for name, c := range map[string]struct {
		entries []types.SendMessageBatchRequestEntry
		want    any
	}{
		"empty":    {[]types.SendMessageBatchRequestEntry{}, new(*types.EmptyBatchRequest)},
		"eleven":   {ten, new(*types.TooManyEntriesInBatchRequest)},
		"repeated": {dup, new(*types.BatchEntryIdsNotDistinct)},
	} {
		_, err := client.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: url.QueueUrl, Entries: c.entries})
		if err == nil || !errors.As(err, c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// A bad single message is refused whole; a wrong key does not get in.
	_, err = client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: url.QueueUrl, MessageBody: aws.String(`{"UserId":"x,y","Body":"b"}`)})
	var invalid *types.InvalidMessageContents
	if !errors.As(err, &invalid) {
		t.Fatalf("bad message: %v, want InvalidMessageContents", err)
	}
	_, err = ts.sqsClient("not-the-api-key-0123456").SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: url.QueueUrl,
		MessageBody: aws.String(`{"UserId":"sqs-user","Body":"intruder"}`)})
	if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong key: %v", err)
	}
	ts.send(`{"UserId":"sqs-user","Body":"probe"}`)
	c.expectFrame(t, "probe") // nothing refused above was delivered
}
