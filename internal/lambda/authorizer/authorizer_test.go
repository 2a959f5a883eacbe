package authorizer_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/lambda/authorizer"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/secret/ssm"
)

type rig struct {
	h      *authorizer.Handler
	srv    *awsfake.Server
	secret string
	down   bool
	logs   *bytes.Buffer
}

func newRig(t *testing.T) *rig {
	r := &rig{secret: "first-secret-0123456789abcdef", logs: &bytes.Buffer{}}
	r.srv = awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		if r.down {
			return awsfake.Error(http.StatusInternalServerError, "InternalServerError", "unavailable")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"Parameter": map[string]any{
			"Name": "/WebSocketAdapter/JwtSecret", "Type": "SecureString", "Value": r.secret}})
	})
	r.h = &authorizer.Handler{
		Secrets: ssm.New(awsssm.NewFromConfig(r.srv.Config()), "/WebSocketAdapter/JwtSecret", time.Hour),
		Policy:  auth.DefaultPolicy(),
		Logger:  slog.New(slog.NewJSONHandler(r.logs, nil)),
	}
	return r
}

func request(t *testing.T, token string) lambdaevents.APIGatewayCustomAuthorizerRequestTypeRequest {
	var req lambdaevents.APIGatewayCustomAuthorizerRequestTypeRequest
	lambdatest.Load(t, "authorizer-request.json", map[string]string{"TOKEN": token}, &req)
	return req
}

func mint(t *testing.T, secret, user string) string {
	tok, err := auth.Mint([]byte(secret), user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAllowsAValidToken(t *testing.T) {
	r := newRig(t)
	req := request(t, mint(t, r.secret, "1234"))
	resp, err := r.h.Handle(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	st := resp.PolicyDocument.Statement
	if resp.PrincipalID != "1234" || resp.Context["userId"] != "1234" || len(st) != 1 || st[0].Effect != "Allow" ||
		st[0].Resource[0] != req.MethodArn || st[0].Action[0] != "execute-api:Invoke" || resp.PolicyDocument.Version != "2012-10-17" {
		t.Fatalf("response %+v", resp)
	}
	// The header works too when the query string has no token.
	req.QueryStringParameters = nil
	req.Headers["authorization"] = "Bearer " + mint(t, r.secret, "5678")
	if resp, err := r.h.Handle(context.Background(), req); err != nil || resp.PrincipalID != "5678" {
		t.Fatalf("header token: %+v %v", resp, err)
	}
}

func TestRefusesBadTokensWithUnauthorized(t *testing.T) {
	r := newRig(t)
	for name, tok := range map[string]string{
		"missing":      "",
		"garbage":      "abc.def.ghi",
		"wrong secret": mint(t, "another-secret-0123456789abc", "1234"),
	} {
		_, err := r.h.Handle(context.Background(), request(t, tok))
		if err == nil || err.Error() != "Unauthorized" || !errors.Is(err, authorizer.ErrUnauthorized) {
			t.Errorf("%s: err = %v, want Unauthorized", name, err)
		}
	}
	if strings.Contains(r.logs.String(), "abc.def.ghi") {
		t.Fatal("a token was logged")
	}
}

func TestSecretUnreachableFailsClosed(t *testing.T) {
	r := newRig(t)
	r.down = true
	_, err := r.h.Handle(context.Background(), request(t, mint(t, r.secret, "1234")))
	if err == nil || err.Error() == "Unauthorized" {
		t.Fatalf("err = %v: an unreachable secret must fail the request, not allow or 401 it", err)
	}
	if !strings.Contains(r.logs.String(), "jwt secret unavailable") {
		t.Fatalf("the cause was not logged: %s", r.logs.String())
	}
}

func TestRotatedSecretIsPickedUpOnSignatureFailure(t *testing.T) {
	r := newRig(t)
	if _, err := r.h.Handle(context.Background(), request(t, mint(t, r.secret, "1234"))); err != nil {
		t.Fatal(err)
	}
	r.secret = "rotated-secret-0123456789abcdef"
	resp, err := r.h.Handle(context.Background(), request(t, mint(t, r.secret, "1234")))
	if err != nil || resp.PrincipalID != "1234" {
		t.Fatalf("token of the rotated secret: %v", err)
	}
	// A bad signature right after does not reach SSM again (at most one refresh a minute).
	before := len(r.srv.Requests())
	if _, err := r.h.Handle(context.Background(), request(t, mint(t, "yet-another-secret-0123456789", "1234"))); err == nil {
		t.Fatal("accepted")
	}
	if after := len(r.srv.Requests()); after != before {
		t.Fatalf("%d more SSM calls within a minute", after-before)
	}
}

// TestSSMTimeoutFailsClosed: an SSM that does not answer in time refuses the connection
// (a 500, not an Allow and not a 401) and says why in the logs.
func TestSSMTimeoutFailsClosed(t *testing.T) {
	r := newRig(t)
	release := make(chan struct{})
	defer close(release)
	r.srv.SetAnswer(func(awsfake.Request) awsfake.Response {
		<-release
		return awsfake.Response{Status: http.StatusInternalServerError}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := r.h.Handle(ctx, request(t, mint(t, r.secret, "1234")))
	if err == nil || errors.Is(err, authorizer.ErrUnauthorized) {
		t.Fatalf("err = %v, want a failure that is not Unauthorized", err)
	}
	if !strings.Contains(r.logs.String(), "jwt secret unavailable") {
		t.Fatalf("logs: %s", r.logs.String())
	}
}
