package connection_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// TestOptInAndRecoverRefusals: only a $connect that asks for wspresence.v1 gets it back
// and is flagged; a malformed recover, a second one, and one on a connection that did not
// opt in are each answered with one invalid_frame error frame, and nothing is replayed.
func TestOptInAndRecoverRefusals(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	st.RecoveryWindow = 120e9
	var mu sync.Mutex
	frames := map[string][]string{}
	srv := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		mu.Lock()
		defer mu.Unlock()
		c := req.Path[strings.LastIndex(req.Path, "/")+1:]
		frames[c] = append(frames[c], string(req.Body))
		return awsfake.Response{Status: http.StatusOK}
	})
	gw := apigw.New(apigatewaymanagementapi.NewFromConfig(srv.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(srv.URL + "/production")
	}))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &connection.Handler{Log: st, Owners: st, View: st, MaxConnectionsPerUser: 10, Logger: quiet,
		Recovery: &connection.Recovery{Streams: st, Connections: st, Poster: gw, Log: st, Window: st.RecoveryWindow}}
	ctx := context.Background()
	connect := func(id, protocols string) lambdaevents.APIGatewayProxyResponse {
		var req lambdaevents.APIGatewayWebsocketProxyRequest
		lambdatest.Load(t, "websocket-connect.json", nil, &req)
		req.RequestContext.ConnectionID = id
		if protocols != "" {
			// API Gateway hands headers as the client sent them: any case.
			req.Headers["sec-websocket-protocol"] = protocols
		}
		resp, err := h.ConnectOrMessage(ctx, req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("$connect %s: %+v %v", id, resp, err)
		}
		return resp
	}
	recover := func(id, body string) {
		var req lambdaevents.APIGatewayWebsocketProxyRequest
		lambdatest.Load(t, "websocket-recover.json", map[string]string{"epoch": "E", "offset": "1"}, &req)
		req.RequestContext.ConnectionID = id
		req.Body = body
		if resp, err := h.ConnectOrMessage(ctx, req); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("recover on %s: %+v %v", id, resp, err)
		}
	}
	if resp := connect("raw", ""); resp.Headers["Sec-WebSocket-Protocol"] != "" {
		t.Fatalf("a raw client got a subprotocol: %v", resp.Headers)
	}
	if resp := connect("other", "chat"); resp.Headers["Sec-WebSocket-Protocol"] != "" {
		t.Fatalf("a client asking for another subprotocol got one: %v", resp.Headers)
	}
	if resp := connect("framed", "chat,"+recovery.Subprotocol); resp.Headers["Sec-WebSocket-Protocol"] != recovery.Subprotocol {
		t.Fatalf("the subprotocol was not selected: %v", resp.Headers)
	}
	head, ok, err := st.StreamHead(ctx, "1234")
	if err != nil || !ok || len(head.Framed) != 1 || head.Framed["framed"].IsZero() {
		t.Fatalf("flags %+v %v %v", head, ok, err)
	}

	recover("raw", `{"action":"recover"}`)
	recover("framed", `{"action":"recover","epoch":7}`)
	recover("framed", `{"action":"recover"}`)
	recover("framed", `{"action":"recover"}`)
	want := map[string][]string{
		"raw": {`{"type":"error","code":"invalid_frame","message":"recover needs the wspresence.v1 subprotocol"}`},
		"framed": {`{"type":"error","code":"invalid_frame","message":"a recover request is {\"action\":\"recover\"} or {\"action\":\"recover\",\"epoch\":E,\"offset\":N}"}`,
			`{"type":"recovered","recovered":false,"reason":"fresh","epoch":"` + head.Epoch + `","offset":0,"replayed":0}`,
			`{"type":"error","code":"invalid_frame","message":"recover was already sent on this connection"}`},
	}
	mu.Lock()
	defer mu.Unlock()
	for c, fs := range want {
		if strings.Join(frames[c], "\n") != strings.Join(fs, "\n") {
			t.Errorf("frames to %s:\n%s\nwant\n%s", c, strings.Join(frames[c], "\n"), strings.Join(fs, "\n"))
		}
	}
	if len(frames) != 2 {
		t.Errorf("frames to %d connections: %v", len(frames), frames)
	}
}
