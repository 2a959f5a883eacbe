package apikey_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/internal/lambda/apikey"
	"github.com/wspresence/wspresence/internal/lambdatest"
)

// keys is a hand-written Keys: the current key, the one a refresh finds, or an outage.
type keys struct {
	current, fresh string
	down           bool
	refreshes      int
}

func (k *keys) Get(context.Context) (string, error) {
	if k.down {
		return "", errors.New("ssm unavailable")
	}
	return k.current, nil
}

func (k *keys) Refresh(context.Context) (string, bool, error) {
	k.refreshes++
	changed := k.fresh != "" && k.fresh != k.current
	if changed {
		k.current = k.fresh
	}
	return k.current, changed, nil
}

func request(t *testing.T, key string) lambdaevents.APIGatewayV2CustomAuthorizerV2Request {
	var req lambdaevents.APIGatewayV2CustomAuthorizerV2Request
	lambdatest.Load(t, "http-api-v2-authorizer.json", map[string]string{"KEY": key}, &req)
	return req
}

func TestAPIKeyAuthorizer(t *testing.T) {
	var logs bytes.Buffer
	k := &keys{current: "the-right-key-0123456789"}
	h := &apikey.Handler{Keys: k, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	ctx := context.Background()

	if r, err := h.Handle(ctx, request(t, "the-right-key-0123456789")); err != nil || !r.IsAuthorized {
		t.Fatalf("right key: %+v %v", r, err)
	}
	for _, bad := range []string{"", "the-wrong-key-0123456789", "the-right-key-012345678"} {
		if r, err := h.Handle(ctx, request(t, bad)); err != nil || r.IsAuthorized {
			t.Fatalf("key %q: %+v %v", bad, r, err)
		}
	}
	// The bearer form is accepted too.
	req := request(t, "")
	delete(req.Headers, "x-api-key")
	req.Headers["authorization"] = "Bearer the-right-key-0123456789"
	if r, _ := h.Handle(ctx, req); !r.IsAuthorized {
		t.Fatal("bearer form refused")
	}
	// A rotated key is found by a refresh.
	k.fresh = "the-rotated-key-0123456789"
	if r, _ := h.Handle(ctx, request(t, "the-rotated-key-0123456789")); !r.IsAuthorized || k.refreshes == 0 {
		t.Fatalf("rotated key refused (%d refreshes)", k.refreshes)
	}
	// SSM down: fail closed with an error (a 500), never an Allow.
	k.down = true
	if r, err := h.Handle(ctx, request(t, "the-rotated-key-0123456789")); err == nil || r.IsAuthorized {
		t.Fatalf("SSM down: %+v %v", r, err)
	}
	if strings.Contains(logs.String(), "the-r") {
		t.Fatal("a key reached the logs")
	}
}
