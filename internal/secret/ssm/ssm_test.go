package ssm_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/secret/ssm"
)

func TestCachingAndRotation(t *testing.T) {
	value := "secret-one-0123456789"
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		return awsfake.JSON(http.StatusOK, map[string]any{"Parameter": map[string]any{
			"Name": "/WebSocketAdapter/JwtSecret", "Type": "SecureString", "Value": value, "Version": 1}})
	})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := ssm.New(awsssm.NewFromConfig(srv.Config()), "/WebSocketAdapter/JwtSecret", 5*time.Minute)
	s.Now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		if v, err := s.Get(ctx); err != nil || v != "secret-one-0123456789" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d GetParameter calls for 3 reads within the TTL", len(reqs))
	}
	var in struct {
		Name           string
		WithDecryption bool
	}
	reqs[0].Decode(t, &in)
	if reqs[0].Target != "AmazonSSM.GetParameter" || in.Name != "/WebSocketAdapter/JwtSecret" || !in.WithDecryption {
		t.Fatalf("request %s %+v", reqs[0].Target, in)
	}
	// Rotation: a forced refresh picks up the new value, at most once a minute.
	value = "secret-two-0123456789"
	if v, changed, err := s.Refresh(ctx); err != nil || !changed || v != value {
		t.Fatalf("Refresh = %q %v %v", v, changed, err)
	}
	if _, changed, _ := s.Refresh(ctx); changed || len(srv.Requests()) != 2 {
		t.Fatalf("second refresh within a minute reached SSM (%d calls)", len(srv.Requests()))
	}
	now = now.Add(6 * time.Minute)
	if v, _ := s.Get(ctx); v != value || len(srv.Requests()) != 3 {
		t.Fatalf("after the TTL: %q, %d calls", v, len(srv.Requests()))
	}
}

func TestUnreachable(t *testing.T) {
	srv := awsfake.New(t, func(awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusInternalServerError, "InternalServerError", "down")
	})
	s := ssm.New(awsssm.NewFromConfig(srv.Config()), "/p", time.Minute)
	if _, err := s.Get(context.Background()); !errors.Is(err, failure.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}
