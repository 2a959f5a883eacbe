package online_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/lambda/online"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/onlineapi"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
	"github.com/wspresence/wspresence/schemas"
)

func TestOnline(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, e := range []events.ConnectionEvent{
		events.Opened("1234", "a=", at, "", ""), events.Opened("1234", "b=", at.Add(time.Second), "", ""),
		events.Opened("0001", "c=", at, "", ""), events.Opened("0002", "d=", at, "", ""),
	} {
		if _, err := st.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	h := &online.Handler{View: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var req lambdaevents.APIGatewayV2HTTPRequest
	lambdatest.Load(t, "http-api-v2-online.json", nil, &req)

	resp, err := h.Handle(ctx, req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Headers["Content-Type"] != "application/json" {
		t.Fatalf("response %+v %v", resp, err)
	}
	typed := schematest.DecodeOriginalList(t, []byte(resp.Body))
	var got []onlineapi.Status
	_ = json.Unmarshal([]byte(resp.Body), &got)
	if len(got) != 2 || got[0].UserID != "1234" || got[0].Connections != 2 || !got[0].LastActivity.Equal(at.Add(time.Second)) ||
		got[1].UserID != "5678" || got[1].IsOnline || !got[1].LastActivity.IsZero() ||
		!bool(typed[0].IsOnline) || !time.Time(typed[0].LastActivity).Equal(at.Add(time.Second)) || !time.Time(typed[1].LastActivity).IsZero() {
		t.Fatalf("answer %s", resp.Body)
	}

	// Without limit: every online user, in one reply, with no continuation.
	req.RawQueryString = ""
	resp, _ = h.Handle(ctx, req)
	if all := schematest.DecodeOriginalList(t, []byte(resp.Body)); len(all) != 3 || resp.Headers[onlineapi.NextTokenHeader] != "" {
		t.Fatalf("unpaged list %s", resp.Body)
	}

	// GET /user/{userId}/online, the original's per-user route.
	for id, want := range map[string]string{"1234": "online", "5678": "offline", "ghost": "offline"} {
		ureq := req
		ureq.RawPath, ureq.RouteKey = "/user/"+id+"/online", "GET /user/{userId}/online"
		ureq.PathParameters = map[string]string{"userId": id}
		resp, _ = h.Handle(ctx, ureq)
		if resp.StatusCode != http.StatusOK || schematest.DecodeOriginalStatus(t, []byte(resp.Body)).Status != want {
			t.Fatalf("GET /user/%s/online: %d %s, want %s", id, resp.StatusCode, resp.Body, want)
		}
	}
	ureq := req
	ureq.PathParameters = map[string]string{"userId": "x,y"}
	if resp, _ = h.Handle(ctx, ureq); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("GET /user/x,y/online: %d %s", resp.StatusCode, resp.Body)
	}

	// The list, paginated.
	req.RawQueryString = "limit=2"
	resp, _ = h.Handle(ctx, req)
	schematest.DecodeOriginalList(t, []byte(resp.Body))
	_ = json.Unmarshal([]byte(resp.Body), &got)
	next := resp.Headers[onlineapi.NextTokenHeader]
	if len(got) != 2 || got[0].UserID != "0001" || got[1].UserID != "0002" || next == "" {
		t.Fatalf("first page %s (next %q)", resp.Body, next)
	}
	req.RawQueryString = "limit=2&nextToken=" + next
	resp, _ = h.Handle(ctx, req)
	_ = json.Unmarshal([]byte(resp.Body), &got)
	if len(got) != 1 || got[0].UserID != "1234" || resp.Headers[onlineapi.NextTokenHeader] != "" {
		t.Fatalf("second page %s", resp.Body)
	}

	// Bad input: 400 with a JSON error; other methods: 405.
	for q, code := range map[string]string{"limit=0": httperr.CodeInvalidLimit, "nextToken=zz": httperr.CodeInvalidToken, "userIds=": httperr.CodeInvalidUserIDs} {
		req.RawQueryString = q
		resp, _ = h.Handle(ctx, req)
		schematest.Check(t, schemas.Error, []byte(resp.Body))
		var e httperr.Error
		_ = json.Unmarshal([]byte(resp.Body), &e)
		if resp.StatusCode != http.StatusBadRequest || e.Code != code {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, resp.Body)
		}
	}
	req.RequestContext.HTTP.Method = http.MethodPost
	if resp, _ = h.Handle(ctx, req); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}
