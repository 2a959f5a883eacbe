// Package online is the HTTP API (payload v2) handler of GET /user/online on AWS: the
// contract of package onlineapi over the DynamoDB view. Bad input gets a 400 JSON error,
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
	q, err := onlineapi.Parse(req.RawQueryString)
	if err != nil {
		return errorReply(err), nil
	}
	out, next, err := onlineapi.Answer(ctx, h.View, q)
	if err != nil {
		h.Logger.ErrorContext(ctx, "read view", "apiRequestId", req.RequestContext.RequestID, "err", err)
		return reply(http.StatusInternalServerError, httperr.New(http.StatusInternalServerError, httperr.CodeInternal, "internal error")), nil
	}
	r := reply(http.StatusOK, out)
	if next != "" {
		r.Headers[onlineapi.NextTokenHeader] = next
	}
	return r, nil
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
