// Package authorizer is the WebSocket REQUEST authorizer of the AWS runtime: it takes the
// user's JWT from the Authorization query parameter (the original contract) or header,
// validates it with the secret from SSM, and answers an Allow policy for the $connect
// method with the userId in the context. A bad token answers "Unauthorized" (API Gateway's
// 401); a secret that cannot be read fails closed. A Handler is safe for concurrent use.
package authorizer

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/emf"
)

// ErrUnauthorized is the error API Gateway turns into a 401: its text must be exactly
// "Unauthorized".
var ErrUnauthorized = errors.New("Unauthorized")

// Secrets provides the JWT secret: Get reads it (cached), Refresh forces a new read (rate
// limited) and says whether it changed.
type Secrets interface {
	Get(ctx context.Context) (string, error)
	Refresh(ctx context.Context) (string, bool, error)
}

// Handler authorizes $connect requests.
type Handler struct {
	Secrets Secrets
	// Policy is what tokens must meet besides the signature (algorithms, exp, leeway).
	Policy auth.Policy
	Logger *slog.Logger
	// Metrics, if set, receives one EMF record per request: Authorized, or AuthFailures
	// with the refusal's Reason as a dimension.
	Metrics *emf.Logger

	mu       sync.Mutex
	secret   string
	verifier *auth.Verifier
}

func (h *Handler) verifierFor(secret string) (*auth.Verifier, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.verifier != nil && h.secret == secret {
		return h.verifier, nil
	}
	v, err := auth.NewVerifier([]byte(secret), h.Policy)
	if err != nil {
		return nil, err
	}
	h.secret, h.verifier = secret, v
	return v, nil
}

// Token returns the token of a request: the Authorization query parameter, else the
// Authorization header (with or without "Bearer ").
func Token(req lambdaevents.APIGatewayCustomAuthorizerRequestTypeRequest) string {
	if v := req.QueryStringParameters["Authorization"]; v != "" {
		return auth.BearerToken(v)
	}
	return auth.BearerToken(auth.Header(req.Headers, "Authorization"))
}

// Handle answers one authorization request.
func (h *Handler) Handle(ctx context.Context, req lambdaevents.APIGatewayCustomAuthorizerRequestTypeRequest) (lambdaevents.APIGatewayCustomAuthorizerResponse, error) {
	log := h.Logger.With("apiRequestId", req.RequestContext.RequestID)
	secret, err := h.Secrets.Get(ctx)
	if err != nil {
		log.ErrorContext(ctx, "jwt secret unavailable: refusing the connection", "err", err)
		return lambdaevents.APIGatewayCustomAuthorizerResponse{}, errors.New("authorizer unavailable")
	}
	userID, err := h.verify(ctx, secret, Token(req))
	if err != nil {
		log.InfoContext(ctx, "connection refused", "reason", string(auth.ReasonOf(err)), "sourceIp", req.RequestContext.Identity.SourceIP)
		_ = h.Metrics.Emit(map[string]string{"Function": "authorizer", "Reason": string(auth.ReasonOf(err))},
			emf.Metric{Name: "AuthFailures", Value: 1, Unit: emf.Count})
		return lambdaevents.APIGatewayCustomAuthorizerResponse{}, ErrUnauthorized
	}
	_ = h.Metrics.Emit(map[string]string{"Function": "authorizer"}, emf.Metric{Name: "Authorized", Value: 1, Unit: emf.Count})
	return lambdaevents.APIGatewayCustomAuthorizerResponse{
		PrincipalID: userID,
		PolicyDocument: lambdaevents.APIGatewayCustomAuthorizerPolicy{
			Version: "2012-10-17",
			Statement: []lambdaevents.IAMPolicyStatement{{
				Action:   []string{"execute-api:Invoke"},
				Effect:   "Allow",
				Resource: []string{req.MethodArn},
			}},
		},
		Context: map[string]any{"userId": userID},
	}, nil
}

// verify checks token; on a signature failure it refreshes the secret (at most once per
// interval, for rotation) and checks again with the new one.
func (h *Handler) verify(ctx context.Context, secret, token string) (string, error) {
	v, err := h.verifierFor(secret)
	if err != nil {
		return "", err
	}
	userID, err := v.Verify(token)
	if auth.ReasonOf(err) != auth.ReasonSignature {
		return userID, err
	}
	fresh, changed, rerr := h.Secrets.Refresh(ctx)
	if rerr != nil || !changed {
		return "", err
	}
	if v, err = h.verifierFor(fresh); err != nil {
		return "", err
	}
	return v.Verify(token)
}
