// Package apikey is the HTTP API Lambda authorizer of the AWS runtime's API-key REST auth
// mode (template parameter RestAuthMode=ApiKey): for backend callers that cannot sign
// requests with SigV4, it compares the request's X-Api-Key header (or "Authorization:
// Bearer <key>") with the key kept in SSM, in constant time, and answers the HTTP API's
// simple response. A key that cannot be read fails closed. A Handler is safe for
// concurrent use if its Keys are.
package apikey

import (
	"context"
	"log/slog"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/emf"
)

// Keys provides the API key: Get reads it (cached), Refresh forces a new read (rate
// limited) and says whether it changed, so a rotated key is picked up at once.
type Keys interface {
	Get(ctx context.Context) (string, error)
	Refresh(ctx context.Context) (string, bool, error)
}

// Handler authorizes REST requests.
type Handler struct {
	Keys   Keys
	Logger *slog.Logger
	// Metrics, if set, receives one EMF record per request: Authorized or AuthFailures.
	Metrics *emf.Logger
}

// Key returns the key a request carries: X-Api-Key, else a bearer Authorization header.
// HTTP API lower-cases header names in payload 2.0.
func Key(req lambdaevents.APIGatewayV2CustomAuthorizerV2Request) string {
	if v := auth.Header(req.Headers, "x-api-key"); v != "" {
		return v
	}
	return auth.BearerToken(auth.Header(req.Headers, "authorization"))
}

// Handle answers one authorization request. It never returns an error for a wrong key
// (that is {"isAuthorized": false}, a 403); an unreadable key is an error (a 500), so
// nothing is let through while SSM is down.
func (h *Handler) Handle(ctx context.Context, req lambdaevents.APIGatewayV2CustomAuthorizerV2Request) (lambdaevents.APIGatewayV2CustomAuthorizerSimpleResponse, error) {
	log := h.Logger.With("apiRequestId", req.RequestContext.RequestID)
	want, err := h.Keys.Get(ctx)
	if err != nil {
		log.ErrorContext(ctx, "api key unavailable: refusing the request", "err", err)
		return lambdaevents.APIGatewayV2CustomAuthorizerSimpleResponse{}, err
	}
	got := Key(req)
	ok := auth.KeyMatches(want, got)
	if !ok && got != "" {
		if fresh, changed, rerr := h.Keys.Refresh(ctx); rerr == nil && changed {
			ok = auth.KeyMatches(fresh, got)
		}
	}
	if !ok {
		log.InfoContext(ctx, "request refused", "path", req.RawPath, "sourceIp", req.RequestContext.HTTP.SourceIP)
		_ = h.Metrics.Emit(map[string]string{"Function": "restauthorizer"}, emf.Metric{Name: "AuthFailures", Value: 1, Unit: emf.Count})
		return lambdaevents.APIGatewayV2CustomAuthorizerSimpleResponse{IsAuthorized: false}, nil
	}
	_ = h.Metrics.Emit(map[string]string{"Function": "restauthorizer"}, emf.Metric{Name: "Authorized", Value: 1, Unit: emf.Count})
	return lambdaevents.APIGatewayV2CustomAuthorizerSimpleResponse{IsAuthorized: true}, nil
}
