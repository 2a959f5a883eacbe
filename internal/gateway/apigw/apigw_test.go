package apigw_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
)

func gateway(srv *awsfake.Server) *apigw.Gateway {
	cfg := srv.Config()
	g := apigw.New(apigatewaymanagementapi.NewFromConfig(cfg, func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(srv.URL + "/prod")
	}))
	g.Backoff = time.Millisecond
	return g
}

func TestPost(t *testing.T) {
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		switch r.Path {
		case "/prod/@connections/gone=":
			return awsfake.Error(http.StatusGone, "GoneException", "")
		case "/prod/@connections/boom=":
			return awsfake.Error(http.StatusInternalServerError, "InternalServerErrorException", "")
		case "/prod/@connections/denied=":
			return awsfake.Error(http.StatusForbidden, "ForbiddenException", "")
		}
		return awsfake.Response{Status: http.StatusOK}
	})
	g := gateway(srv)
	ctx := context.Background()
	if err := g.Post(ctx, "live=", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	r := srv.Requests()[0]
	if r.Method != http.MethodPost || r.Path != "/prod/@connections/live=" || string(r.Body) != "hello" || r.Header.Get("Authorization") == "" {
		t.Fatalf("request %s %s %q (signed: %v)", r.Method, r.Path, r.Body, r.Header.Get("Authorization") != "")
	}
	if err := g.Post(ctx, "gone=", []byte("x")); !errors.Is(err, delivery.ErrConnectionGone) {
		t.Fatalf("410: %v", err)
	}
	if err := g.Post(ctx, "boom=", []byte("x")); !errors.Is(err, failure.ErrUnavailable) || errors.Is(err, delivery.ErrConnectionGone) {
		t.Fatalf("500: %v", err)
	}
	if err := g.Post(ctx, "denied=", []byte("x")); err == nil || errors.Is(err, delivery.ErrConnectionGone) {
		t.Fatalf("403: %v", err)
	}
}

func TestThrottlingIsRetriedThenReported(t *testing.T) {
	calls := 0
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		calls++
		if calls < 3 {
			return awsfake.Error(http.StatusTooManyRequests, "LimitExceededException", "")
		}
		return awsfake.Response{Status: http.StatusOK}
	})
	g := gateway(srv)
	if err := g.Post(context.Background(), "c=", []byte("x")); err != nil || calls != 3 {
		t.Fatalf("err %v after %d calls, want success on the 3rd", err, calls)
	}
	srv.SetAnswer(func(awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusTooManyRequests, "LimitExceededException", "")
	})
	before := len(srv.Requests())
	if err := g.Post(context.Background(), "c=", []byte("x")); !errors.Is(err, failure.ErrThrottled) {
		t.Fatalf("persistent 429: %v", err)
	}
	if n := len(srv.Requests()) - before; n != g.Attempts {
		t.Fatalf("%d tries, want %d", n, g.Attempts)
	}
}

func TestAlive(t *testing.T) {
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		if r.Method != http.MethodGet {
			t.Errorf("GetConnection used %s", r.Method)
		}
		if r.Path == "/prod/@connections/dead=" {
			return awsfake.Error(http.StatusGone, "GoneException", "")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"connectedAt": "2026-01-01T00:00:00Z", "lastActiveAt": "2026-01-01T00:00:00Z"})
	})
	g := gateway(srv)
	if alive, err := g.Alive(context.Background(), "dead="); err != nil || alive {
		t.Fatalf("dead: %v %v", alive, err)
	}
	if alive, err := g.Alive(context.Background(), "ok="); err != nil || !alive {
		t.Fatalf("alive: %v %v", alive, err)
	}
}
