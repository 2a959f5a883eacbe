package sweeper_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

func TestSweepsDeadConnectionsAndPrunes(t *testing.T) {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, e := range []events.ConnectionEvent{
		events.Opened("u", "dead=", now.Add(-time.Hour), "", ""),
		events.Opened("u", "alive=", now.Add(-time.Hour), "", ""),
		events.Opened("v", "fresh=", now.Add(-time.Minute), "", ""),
		events.Opened("w", "old=", now.Add(-50*time.Hour), "", ""),
		events.Closed("w", "old=", now.Add(-48*time.Hour), events.ReasonClient),
	} {
		if _, err := st.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		if r.Path == "/prod/@connections/dead=" {
			return awsfake.Error(http.StatusGone, "GoneException", "")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"connectedAt": "2026-11-26T11:00:00Z"})
	})
	gw := apigw.New(apigatewaymanagementapi.NewFromConfig(srv.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(srv.URL + "/prod")
	}))
	h := &sweeper.Handler{View: st, Log: st, Gateway: gw, StaleAfter: 15 * time.Minute, Retention: 24 * time.Hour,
		Now: func() time.Time { return now }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var scheduled json.RawMessage
	lambdatest.Load(t, "scheduled-event.json", nil, &scheduled)
	res, err := h.Handle(ctx, scheduled)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked != 2 || res.Swept != 1 || res.Pruned != 1 {
		t.Fatalf("result %+v, want 2 checked (the fresh one is not), 1 swept, 1 pruned", res)
	}
	stream := dynamotest.NewStream(db, tables.Events)
	var swept []string
	for _, rec := range stream.Next(t) {
		if img := rec.Change.NewImage; img["type"].String() == "ConnectionClosed" && img["reason"].String() == "swept" {
			swept = append(swept, img["connectionId"].String())
		}
	}
	if len(swept) != 1 || swept[0] != "dead=" {
		t.Fatalf("swept %v", swept)
	}
	for _, r := range srv.Requests() {
		if r.Path == "/prod/@connections/fresh=" {
			t.Fatal("a fresh connection was checked")
		}
	}
}
