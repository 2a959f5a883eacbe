// Package apigw posts to WebSocket connections through the API Gateway Management API. A
// 410 (GoneException) becomes delivery.ErrConnectionGone; throttling is retried with
// jittered backoff and, when it persists, reported as failure.ErrThrottled. A Gateway is
// safe for concurrent use.
package apigw

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi/types"
	"github.com/wspresence/wspresence/internal/awsfail"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/retry"
)

// Gateway is one WebSocket API stage's connection endpoint.
type Gateway struct {
	client *apigatewaymanagementapi.Client
	// Attempts bounds the tries of one post while throttled (default 4).
	Attempts int
	// Backoff is the base delay between tries (default 50ms, doubled, jittered).
	Backoff time.Duration
}

var _ delivery.Poster = (*Gateway)(nil)

// New returns a Gateway on client (whose endpoint is https://{api}.execute-api.{region}.amazonaws.com/{stage}).
func New(client *apigatewaymanagementapi.Client) *Gateway {
	return &Gateway{client: client, Attempts: 4, Backoff: 50 * time.Millisecond}
}

func isGone(err error) bool {
	var gone *types.GoneException
	return errors.As(err, &gone) || awsfail.Status(err) == http.StatusGone
}

// Post sends data as one frame to the connection.
func (g *Gateway) Post(ctx context.Context, connectionID string, data []byte) error {
	return g.retry(ctx, "post to "+connectionID, func() error {
		_, err := g.client.PostToConnection(ctx, &apigatewaymanagementapi.PostToConnectionInput{
			ConnectionId: aws.String(connectionID), Data: data})
		return err
	})
}

// Alive reports whether the connection still exists (GetConnection; 410 means no).
func (g *Gateway) Alive(ctx context.Context, connectionID string) (bool, error) {
	err := g.retry(ctx, "get "+connectionID, func() error {
		_, err := g.client.GetConnection(ctx, &apigatewaymanagementapi.GetConnectionInput{ConnectionId: aws.String(connectionID)})
		return err
	})
	if errors.Is(err, delivery.ErrConnectionGone) {
		return false, nil
	}
	return err == nil, err
}

func (g *Gateway) retry(ctx context.Context, op string, call func() error) error {
	var err error
	for attempt := 0; attempt < max(g.Attempts, 1); attempt++ {
		if attempt > 0 {
			if err := retry.Sleep(ctx, retry.Backoff(g.Backoff, attempt)); err != nil {
				return err
			}
		}
		err = call()
		switch {
		case err == nil:
			return nil
		case isGone(err):
			return errors.Join(delivery.ErrConnectionGone, awsfail.Wrap(op, err))
		}
		err = awsfail.Wrap(op, err)
		if !errors.Is(err, failure.ErrThrottled) {
			return err
		}
	}
	return err
}
