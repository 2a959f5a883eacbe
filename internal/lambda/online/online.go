// Package online is the HTTP API (payload v2) handler of GET /user/online and GET
// /user/{userId}/online on AWS: the contract of package onlineapi over the DynamoDB view. Bad input gets a 400 JSON error,
// never a 500. A Handler is safe for concurrent use.
package online

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/onlineapi"
)

// Handler answers GET /user/online.
type Handler struct {
	View   onlineapi.View
	Logger *slog.Logger
}

// Handle answers one request.
func (h *Handler) Handle(ctx context.Context, req lambdaevents.APIGatewayV2HTTPRequest) (lambdaevents.APIGatewayV2HTTPResponse, error) {
	if !onlineapi.MethodAllowed(req.RequestContext.HTTP.Method) {
		r := reply(http.StatusMethodNotAllowed, httperr.New(http.StatusMethodNotAllowed, httperr.CodeMethod, "use GET"))
		r.Headers["Allow"] = "GET, HEAD"
		return r, nil
	}
	if id, ok := req.PathParameters["userId"]; ok {
		return h.user(ctx, req, id), nil
	}
	q, err := onlineapi.Parse(req.RawQueryString)
	if err != nil {
		return errorReply(err), nil
	}
	out, next, err := onlineapi.Answer(ctx, h.View, q)
	if err != nil {
		return h.failed(ctx, req, err), nil
	}
	r := reply(http.StatusOK, out)
	if next != "" {
		r.Headers[onlineapi.NextTokenHeader] = next
	}
	return r, nil
}

// user answers GET /user/{userId}/online.
func (h *Handler) user(ctx context.Context, req lambdaevents.APIGatewayV2HTTPRequest, raw string) lambdaevents.APIGatewayV2HTTPResponse {
	id, err := onlineapi.ParseUserID(raw)
	if err != nil {
		return errorReply(err)
	}
	out, err := onlineapi.AnswerUser(ctx, h.View, id)
	if err != nil {
		return h.failed(ctx, req, err)
	}
	return reply(http.StatusOK, out)
}

// failed answers an error of the view: a client error as itself, anything else as a 500
// whose cause is logged.
func (h *Handler) failed(ctx context.Context, req lambdaevents.APIGatewayV2HTTPRequest, err error) lambdaevents.APIGatewayV2HTTPResponse {
	var he *httperr.Error
	if !errors.As(err, &he) {
		h.Logger.ErrorContext(ctx, "read view", "apiRequestId", req.RequestContext.RequestID, "err", err)
	}
	return errorReply(err)
}

func errorReply(err error) lambdaevents.APIGatewayV2HTTPResponse {
	var he *httperr.Error
	if errors.As(err, &he) {
		return reply(he.Status, he)
	}
	return reply(http.StatusInternalServerError, httperr.New(http.StatusInternalServerError, httperr.CodeInternal, "internal error"))
}

func reply(status int, v any) lambdaevents.APIGatewayV2HTTPResponse {
	body, _ := json.Marshal(v)
	return lambdaevents.APIGatewayV2HTTPResponse{
		StatusCode: status,
		Headers:    map[string]string{"Content-Type": "application/json"},
		Body:       string(body),
	}
}
