package localrt

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
)

// The local queue as the SQS JSON protocol (awsJson1_0) names it: an aws-sdk-go-v2 SQS
// client whose BaseEndpoint is this server, with static credentials whose secret access
// key is the API key, sends SendMessage, SendMessageBatch and GetQueueUrl exactly as it
// would to SQS.
const (
	// QueueName is the local queue's name (GetQueueUrl).
	QueueName = "wspresence-messages"
	// queueAccount is the account id in the local queue's URL.
	queueAccount = "000000000000"
	// maxBatchEntries is SQS's limit on SendMessageBatch.
	maxBatchEntries = 10
	// maxSignatureAge is how far X-Amz-Date may be from the server's clock, as on AWS.
	maxSignatureAge = 15 * time.Minute
)

// QueueURL returns the local queue's URL on a server reached at host (host:port).
func QueueURL(host string) string { return "http://" + host + "/" + queueAccount + "/" + QueueName }

var batchEntryID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$`)

// sqsError is an error of the SQS JSON protocol: the __type the SDK maps to its error
// types, and the legacy code of the x-amzn-query-error header.
type sqsError struct {
	status          int
	code, queryCode string
	message         string
}

func (e *sqsError) Error() string { return e.code + ": " + e.message }

func sqsBadRequest(code, queryCode, message string) *sqsError {
	return &sqsError{status: http.StatusBadRequest, code: code, queryCode: queryCode, message: message}
}

var errNoQueue = sqsBadRequest("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue",
	"The specified queue does not exist.")

// handleSQS is POST / with an X-Amz-Target of AmazonSQS.*.
func (s *Server) handleSQS(w http.ResponseWriter, r *http.Request) {
	refuse := func(err error) {
		s.metrics.authFailures.WithLabelValues("sqs_signature").Inc()
		s.log.Info("queue request refused", "remote", r.RemoteAddr, "err", err)
		s.writeSQS(w, 0, &sqsError{status: http.StatusForbidden, code: "SignatureDoesNotMatch", queryCode: "SignatureDoesNotMatch",
			message: "the request signature does not match: sign with the API key as the secret access key"})
	}
	// What needs no body is checked first: a request that cannot be genuine is not read.
	sig, err := parseSigV4(r, s.now())
	if err != nil {
		refuse(err)
		return
	}
	read, err := s.takeBody(w, r, nil)
	switch {
	case errors.Is(err, errBodyOverBudget):
		w.Header().Set("Retry-After", "1")
		s.writeSQS(w, 0, &sqsError{status: http.StatusServiceUnavailable, code: "ServiceUnavailable", queryCode: "ServiceUnavailable",
			message: "too many request bodies in flight; retry later"})
		return
	case err != nil:
		s.writeSQS(w, 0, sqsBadRequest("BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong", "the request is too large"))
		return
	}
	defer read.close()
	body := read.data
	err = sig.verify(r, body, s.cfg.APIKey)
	read.decoded()
	if err != nil {
		refuse(err)
		return
	}
	var out any
	switch target := r.Header.Get("X-Amz-Target"); target {
	case "AmazonSQS.GetQueueUrl":
		out, err = s.sqsGetQueueURL(r, body)
	case "AmazonSQS.SendMessage":
		out, err = s.sqsSendMessage(r.Context(), body)
	case "AmazonSQS.SendMessageBatch":
		out, err = s.sqsSendMessageBatch(r.Context(), body)
	default:
		err = sqsBadRequest("UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation",
			fmt.Sprintf("%s is not served locally: only SendMessage, SendMessageBatch and GetQueueUrl", target))
	}
	s.writeSQS(w, http.StatusOK, err, out)
}

// writeSQS writes out with status, or err as the protocol's error.
func (s *Server) writeSQS(w http.ResponseWriter, status int, err error, out ...any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	if err != nil {
		var se *sqsError
		if !errors.As(err, &se) {
			// Only the durable enqueue fails this way: the store is closed or cannot write for
			// now, or the held messages are at their bound. Nothing was accepted; the SDK
			// retries a 503.
			if !errors.Is(err, errHeldFull) {
				s.log.Error("queue request failed", "err", err)
			}
			w.Header().Set("Retry-After", "1")
			se = &sqsError{status: http.StatusServiceUnavailable, code: "ServiceUnavailable", queryCode: "ServiceUnavailable", message: "the store cannot write for now; retry later"}
			switch {
			case errors.Is(err, errStoreClosed):
				se.message = "server is shutting down"
			case errors.Is(err, errUserHeldFull):
				se.message = "a recipient's messages held for its reconnect are at their bound; retry later"
			case errors.Is(err, errHeldFull):
				se.message = "the messages held for recovering users are at their bound; retry later"
			}
		}
		fault := "Sender"
		if se.status >= 500 {
			fault = "Receiver"
		}
		w.Header().Set("x-amzn-query-error", se.queryCode+";"+fault)
		w.WriteHeader(se.status)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": "com.amazonaws.sqs#" + se.code, "message": se.message})
		return
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(out[0])
}

func decodeSQS(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return sqsBadRequest("InvalidParameterValue", "InvalidParameterValue", "the request body is not a JSON object of the operation's input")
	}
	return nil
}

// checkQueueURL accepts the local queue's URL, whatever host the client reached it by.
func checkQueueURL(u string) error {
	if u == "" {
		return sqsBadRequest("MissingParameter", "MissingParameter", "QueueUrl is required")
	}
	if !strings.HasSuffix(strings.TrimRight(u, "/"), "/"+QueueName) {
		return errNoQueue
	}
	return nil
}

func (s *Server) sqsGetQueueURL(r *http.Request, body []byte) (any, error) {
	var in struct{ QueueName string }
	if err := decodeSQS(body, &in); err != nil {
		return nil, err
	}
	if in.QueueName != QueueName {
		return nil, errNoQueue
	}
	return map[string]string{"QueueUrl": QueueURL(r.Host)}, nil
}

// sendEntry is the part of a SendMessage input (or batch entry) the local queue reads.
// Message attributes and delays are refused rather than silently dropped.
type sendEntry struct {
	ID string `json:"Id"`
	// MessageBody is kept as the request wrote it (a JSON string), so the text rule sees
	// the bytes and escapes encoding/json would turn into U+FFFD.
	MessageBody       json.RawMessage
	DelaySeconds      int
	MessageAttributes map[string]json.RawMessage
	body              string
}

// message decodes the entry's body as POST /messages decodes a message: text that is not
// UTF-8 (raw, or an escaped unpaired surrogate) is refused, never rewritten.
func (e *sendEntry) message() (events.Message, error) {
	if len(e.MessageBody) == 0 || string(e.MessageBody) == "null" {
		return events.Message{}, sqsBadRequest("MissingParameter", "MissingParameter", "MessageBody is required")
	}
	if err := events.CheckJSONText(e.MessageBody); err != nil {
		return events.Message{}, sqsBadRequest("InvalidMessageContents", "InvalidMessageContents",
			err.Error()+": the message body must be valid UTF-8")
	}
	switch {
	case json.Unmarshal(e.MessageBody, &e.body) != nil:
		return events.Message{}, sqsBadRequest("InvalidParameterValue", "InvalidParameterValue", "MessageBody must be a string")
	case e.DelaySeconds != 0:
		return events.Message{}, sqsBadRequest("InvalidParameterValue", "InvalidParameterValue", "DelaySeconds is not supported by the local queue")
	case len(e.MessageAttributes) > 0:
		return events.Message{}, sqsBadRequest("InvalidParameterValue", "InvalidParameterValue", "MessageAttributes are not read by wspresence; send none")
	}
	m, err := events.DecodeMessage([]byte(e.body))
	if err != nil {
		return events.Message{}, sqsBadRequest("InvalidMessageContents", "InvalidMessageContents", err.Error())
	}
	return m, nil
}

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func (s *Server) sqsSendMessage(ctx context.Context, body []byte) (any, error) {
	var in struct {
		QueueUrl string
		sendEntry
	}
	if err := decodeSQS(body, &in); err != nil {
		return nil, err
	}
	if err := checkQueueURL(in.QueueUrl); err != nil {
		return nil, err
	}
	m, err := in.message()
	if err != nil {
		return nil, err
	}
	ids, err := s.enqueue(ctx, []events.Message{m})
	if err != nil {
		return nil, err
	}
	return map[string]string{"MessageId": ids[0], "MD5OfMessageBody": md5Hex(in.body)}, nil
}

type batchResultEntry struct {
	ID               string `json:"Id"`
	MessageID        string `json:"MessageId"`
	MD5OfMessageBody string
}

type batchErrorEntry struct {
	ID          string `json:"Id"`
	SenderFault bool
	Code        string
	Message     string
}

// sqsSendMessageBatch enqueues the good entries in one durable write and reports each bad
// one in Failed, as SQS does.
func (s *Server) sqsSendMessageBatch(ctx context.Context, body []byte) (any, error) {
	var in struct {
		QueueUrl string
		Entries  []sendEntry
	}
	if err := decodeSQS(body, &in); err != nil {
		return nil, err
	}
	if err := checkQueueURL(in.QueueUrl); err != nil {
		return nil, err
	}
	switch {
	case len(in.Entries) == 0:
		return nil, sqsBadRequest("EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest", "the batch holds no entry")
	case len(in.Entries) > maxBatchEntries:
		return nil, sqsBadRequest("TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
			fmt.Sprintf("%d entries, at most %d", len(in.Entries), maxBatchEntries))
	}
	seen := map[string]bool{}
	for _, e := range in.Entries {
		if !batchEntryID.MatchString(e.ID) {
			return nil, sqsBadRequest("InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId",
				"entry ids are 1 to 80 letters, digits, hyphens and underscores")
		}
		if seen[e.ID] {
			return nil, sqsBadRequest("BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", "entry id "+e.ID+" is repeated")
		}
		seen[e.ID] = true
	}
	out := struct {
		Successful []batchResultEntry
		Failed     []batchErrorEntry
	}{Successful: []batchResultEntry{}, Failed: []batchErrorEntry{}}
	var good []events.Message
	var goodEntries []sendEntry
	for _, e := range in.Entries {
		m, err := e.message()
		if err != nil {
			var se *sqsError
			errors.As(err, &se)
			out.Failed = append(out.Failed, batchErrorEntry{ID: e.ID, SenderFault: true, Code: se.code, Message: se.message})
			continue
		}
		good, goodEntries = append(good, m), append(goodEntries, e)
	}
	if len(good) > 0 {
		ids, err := s.enqueue(ctx, good)
		if err != nil {
			return nil, err
		}
		for i, e := range goodEntries {
			out.Successful = append(out.Successful, batchResultEntry{ID: e.ID, MessageID: ids[i], MD5OfMessageBody: md5Hex(e.body)})
		}
	}
	return out, nil
}
