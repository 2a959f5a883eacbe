package localrt_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/wspresence/wspresence/internal/localrt"
)

// botoScript enqueues through botocore's SQS client (the Python SDK the aws CLI is built
// on, which signs other headers than the Go SDK and escapes text its own way): a message,
// a batch with an entry whose body holds an unpaired surrogate (Python strings can), and
// a message signed with a wrong key. It prints what it got as JSON.
const botoScript = `
import json, sys, boto3, botocore
endpoint, key = sys.argv[1], sys.argv[2]
def client(secret):
    return boto3.client("sqs", endpoint_url=endpoint, region_name="eu-west-1",
        aws_access_key_id="local", aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}))
c = client(key)
url = c.get_queue_url(QueueName="wspresence-messages")["QueueUrl"]
one = c.send_message(QueueUrl=url, MessageBody=json.dumps({"UserId": "boto-user", "Body": "from botocore"}))
batch = c.send_message_batch(QueueUrl=url, Entries=[
    {"Id": "ok", "MessageBody": json.dumps({"UserId": "boto-user", "Body": "boto batch"})},
    {"Id": "surrogate", "MessageBody": '{"UserId": "boto-user", "Body": "x\ud800y"}'},
])
try:
    client("wrong-key-0123456789").send_message(QueueUrl=url, MessageBody=json.dumps({"UserId": "boto-user", "Body": "intruder"}))
    wrong = "accepted"
except botocore.exceptions.ClientError as e:
    wrong = e.response["Error"]["Code"]
print(json.dumps({"url": url, "id": one["MessageId"], "ok": [e["Id"] for e in batch.get("Successful", [])],
    "failed": [[e["Id"], e["Code"]] for e in batch.get("Failed", [])], "wrong": wrong}))
`

// TestSQSProtocolWithOtherClients: the local queue takes what botocore (Python) and the
// aws CLI send, signed as they sign (SignedHeaders of their own choosing), applies POST's
// text rule to their bodies (an unpaired surrogate is a Failed entry, never rewritten and
// delivered), and refuses a wrong key.
func TestSQSProtocolWithOtherClients(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed (CI has it, with boto3)")
	}
	if err := exec.Command("python3", "-c", "import boto3").Run(); err != nil {
		t.Skip("boto3 is not installed (CI has it)")
	}
	ts := startServer(t, t.TempDir(), nil)
	c := ts.dial("boto-user")
	waitFor(t, "online", func() bool { s, _ := ts.online("userIds=boto-user"); return s[0].IsOnline })

	out, err := exec.Command("python3", "-c", botoScript, ts.base, testKey).CombinedOutput()
	if err != nil {
		t.Fatalf("botocore: %v\n%s", err, out)
	}
	var got struct {
		URL, ID, Wrong string
		OK             []string
		Failed         [][]string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("botocore printed %s", out)
	}
	if got.ID == "" || strings.Join(got.OK, ",") != "ok" || len(got.Failed) != 1 || got.Failed[0][0] != "surrogate" ||
		got.Failed[0][1] != "InvalidMessageContents" || got.Wrong != "SignatureDoesNotMatch" {
		t.Fatalf("botocore got %+v", got)
	}
	c.expectFrame(t, "from botocore")
	c.expectFrame(t, "boto batch")

	if _, err := exec.LookPath("aws"); err == nil {
		cli := exec.Command("aws", "sqs", "send-message", "--endpoint-url", ts.base, "--region", "eu-west-1",
			"--queue-url", got.URL, "--message-body", `{"UserId":"boto-user","Body":"from the aws CLI"}`, "--output", "json")
		cli.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY="+testKey, "AWS_CONFIG_FILE=/dev/null",
			"AWS_SHARED_CREDENTIALS_FILE=/dev/null")
		if out, err := cli.CombinedOutput(); err != nil || !strings.Contains(string(out), "MessageId") {
			t.Fatalf("aws CLI: %v\n%s", err, out)
		}
		c.expectFrame(t, "from the aws CLI")
	}
	ts.send(`{"UserId":"boto-user","Body":"probe"}`)
	c.expectFrame(t, "probe") // nothing refused above was delivered
}

// signedSQS sends body to the local queue as target, signed by the Go signer.
func signedSQS(t *testing.T, ts *testServer, target string, body []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, ts.base+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Target", target)
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "local", SecretAccessKey: testKey}, req,
		hex.EncodeToString(sum[:]), "sqs", "eu-west-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// Text that is not UTF-8 in a MessageBody, raw or as an escaped unpaired surrogate of the
// request's JSON, is refused as POST refuses it: the message whole, the batch entry alone
// (listed as Failed), never rewritten to U+FFFD and delivered.
func TestSQSRefusesTextThatIsNotUTF8(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	c := ts.dial("text-user")
	waitFor(t, "online", func() bool { s, _ := ts.online("userIds=text-user"); return s[0].IsOnline })
	url := localrt.QueueURL(strings.TrimPrefix(ts.base, "http://"))
	for name, body := range map[string]string{
		"raw":    `{"QueueUrl":"` + url + `","MessageBody":"{\"UserId\":\"text-user\",\"Body\":\"a` + "\xff" + `b\"}"}`,
		"escape": `{"QueueUrl":"` + url + `","MessageBody":"{\"UserId\":\"text-user\",\"Body\":\"a\ud800b\"}"}`,
	} {
		status, resp := signedSQS(t, ts, "AmazonSQS.SendMessage", []byte(body))
		if status != http.StatusBadRequest || !strings.Contains(resp, "InvalidMessageContents") {
			t.Errorf("%s: %d %s, want 400 InvalidMessageContents", name, status, resp)
		}
	}
	batch := `{"QueueUrl":"` + url + `","Entries":[{"Id":"bad","MessageBody":"{\"UserId\":\"text-user\",\"Body\":\"` + "\xfe" + `\"}"},` +
		`{"Id":"good","MessageBody":"{\"UserId\":\"text-user\",\"Body\":\"fine\"}"}]}`
	status, resp := signedSQS(t, ts, "AmazonSQS.SendMessageBatch", []byte(batch))
	var out struct {
		Successful []struct{ Id string }
		Failed     []struct{ Id, Code string }
	}
	if err := json.Unmarshal([]byte(resp), &out); status != http.StatusOK || err != nil || len(out.Successful) != 1 || out.Successful[0].Id != "good" ||
		len(out.Failed) != 1 || out.Failed[0].Id != "bad" || out.Failed[0].Code != "InvalidMessageContents" {
		t.Fatalf("batch: %d %s", status, resp)
	}
	c.expectFrame(t, "fine")
	ts.send(`{"UserId":"text-user","Body":"probe"}`)
	c.expectFrame(t, "probe") // nothing rewritten was delivered before it
}

// TestBodyBudget: request bodies read at once are bounded: while one 4 MiB body is being
// read (a slow or hostile client), a budget of 4 MiB refuses the next POST /messages and
// queue request with 503 and Retry-After before reading them; once it is read, requests
// are taken again.
func TestBodyBudget(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.BodyBudget = localrt.MaxRequestBytes })
	c := ts.dial("budget-user")
	pr, pw := io.Pipe()
	slow, _ := http.NewRequest(http.MethodPost, ts.base+"/messages", pr)
	slow.ContentLength = localrt.MaxRequestBytes
	slow.Header.Set("X-Api-Key", testKey)
	done := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(slow)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	if _, err := pw.Write([]byte(`[{"UserId":"budget-user","Body":"`)); err != nil { // the client is sending it now
		t.Fatal(err)
	}
	// The write returns once the client has the bytes, not once the server's handler has
	// taken the body's budget: until then a request to a user nobody connects as (nothing
	// reaches the client if it is accepted) is taken, and from then on refused.
	waitFor(t, "the slow body's budget taken", func() bool {
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"budget-probe","Body":"probe"}`)).status == http.StatusServiceUnavailable
	})
	r := ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"budget-user","Body":"refused"}`))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("POST /messages past the budget: %d %s", r.status, r.body)
	}
	url := localrt.QueueURL(strings.TrimPrefix(ts.base, "http://"))
	if status, resp := signedSQS(t, ts, "AmazonSQS.SendMessage", []byte(`{"QueueUrl":"`+url+`","MessageBody":"{\"UserId\":\"budget-user\",\"Body\":\"refused\"}"}`)); status != http.StatusServiceUnavailable {
		t.Fatalf("queue request past the budget: %d %s", status, resp)
	}
	pw.CloseWithError(io.ErrUnexpectedEOF) // the slow client gives up
	<-done
	waitFor(t, "the budget back", func() bool { // the server releases it as the handler returns
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"budget-user","Body":"taken again"}`)).status == http.StatusAccepted
	})
	c.expectFrame(t, "taken again") // and nothing refused was delivered before it
}
