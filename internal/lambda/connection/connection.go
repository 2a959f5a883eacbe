// Package connection holds the $connect and $disconnect handlers of the AWS runtime. They
// append ConnectionOpened and ConnectionClosed to the event table with a conditional put
// on the natural key, so a retried invocation appends nothing twice. $connect first folds
// its open into the user's state, with the per-user connection cap decided inside that
// fold (presence.State.Admit, one versioned write: of simultaneous connects at the cap
// minus one, one is admitted), then appends it: a message accepted after $connect
// returned reaches the connection, whatever the stream's delay (read-your-connect; the
// projector's later fold of the same event changes nothing). A refused connect writes
// nothing. $connect never posts to the new connection (API Gateway refuses posts until
// the handshake completes): a connection that opted in to recovery (the wspresence.v1
// subprotocol) gets what it missed when it sends its recover request (the recover route,
// Recover). Handlers are safe for concurrent use.
package connection

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/recovery"
)

// Log appends connection events idempotently.
type Log interface {
	Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error)
}

// Owners finds the user of a connection from its open event, for a $disconnect whose
// request carries no authorizer context.
type Owners interface {
	OpenedBy(ctx context.Context, connectionID string) (string, error)
}

// View folds events into their user's state at once (package dynamo's Store): Admit folds
// an open unless the user is at the cap (presence.ErrConnectionCap, nothing written).
type View interface {
	Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error)
	Admit(ctx context.Context, e events.ConnectionEvent, max int) (presence.Effects, error)
	Touch(ctx context.Context, userID string, at time.Time) (bool, error)
}

// Handler handles $connect and $disconnect.
type Handler struct {
	Log    Log
	Owners Owners
	// View, for $connect: the fold of the open and the connection cap.
	View View
	// MaxConnectionsPerUser refuses a user's connection past that many live ones (0: no
	// cap), decided in the fold of the open.
	MaxConnectionsPerUser int
	Logger                *slog.Logger
	// Metrics, if set, receives one EMF record per request: ConnectionsOpened,
	// ConnectionsClosed (with the Reason dimension) or ActivityRecorded.
	Metrics *emf.Logger
	// Recovery, if set, accepts the wspresence.v1 subprotocol at $connect and serves the
	// recover route; without it the subprotocol is not selected.
	Recovery *Recovery
}

// ErrNoUser is returned when a request carries no userId from the authorizer.
var ErrNoUser = errors.New("no userId in the authorizer context")

// UserID returns the userId the authorizer put in the request context.
func UserID(rc lambdaevents.APIGatewayWebsocketProxyRequestContext) string {
	if m, ok := rc.Authorizer.(map[string]any); ok {
		if v, ok := m["userId"].(string); ok {
			return v
		}
	}
	return ""
}

func eventTime(rc lambdaevents.APIGatewayWebsocketProxyRequestContext) time.Time {
	if rc.RequestTimeEpoch > 0 {
		return time.UnixMilli(rc.RequestTimeEpoch).UTC()
	}
	return time.Now().UTC()
}

func ok() lambdaevents.APIGatewayProxyResponse {
	return lambdaevents.APIGatewayProxyResponse{StatusCode: http.StatusOK}
}

// Connect appends ConnectionOpened and folds it into the user's state. An error, or a
// non-2xx answer (429 at the connection cap), makes API Gateway refuse the connection.
func (h *Handler) Connect(ctx context.Context, req lambdaevents.APIGatewayWebsocketProxyRequest) (lambdaevents.APIGatewayProxyResponse, error) {
	rc := req.RequestContext
	userID := UserID(rc)
	if userID == "" {
		h.Logger.ErrorContext(ctx, "connect without a user", "connectionId", rc.ConnectionID, "apiRequestId", rc.RequestID)
		return lambdaevents.APIGatewayProxyResponse{StatusCode: http.StatusForbidden}, nil
	}
	e := events.Opened(userID, rc.ConnectionID, eventTime(rc), rc.Identity.SourceIP, rc.Identity.UserAgent)
	framed := h.Recovery != nil && optIn(req)
	if framed {
		// Flagged before the open is folded: a sender that finds the connection live
		// knows it takes frames.
		if err := h.Recovery.Streams.Frame(ctx, userID, rc.ConnectionID, h.Recovery.now()); err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("connect %s: %w", rc.ConnectionID, err)
		}
	}
	if _, err := h.View.Admit(ctx, e, h.MaxConnectionsPerUser); err != nil {
		if errors.Is(err, presence.ErrConnectionCap) {
			h.Logger.InfoContext(ctx, "connection refused", "reason", "connection_cap", "userId", userID, "connectionId", rc.ConnectionID)
			_ = h.Metrics.Emit(map[string]string{"Function": "connect", "Reason": "connection_cap"}, emf.Metric{Name: "ConnectionsRefused", Value: 1, Unit: emf.Count})
			return lambdaevents.APIGatewayProxyResponse{StatusCode: http.StatusTooManyRequests, Body: "too many connections for this user"}, nil
		}
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("connect %s: fold the open: %w", rc.ConnectionID, err)
	}
	if _, err := h.Log.Append(ctx, e); err != nil {
		// The connection is refused: fold its close too, so nobody stays online for it.
		// If that fails as well, the reconciler finds the connection gone and closes it.
		if _, cerr := h.View.Apply(ctx, events.Closed(userID, rc.ConnectionID, eventTime(rc), events.ReasonExpired)); cerr != nil {
			h.Logger.ErrorContext(ctx, "close of a refused connection not folded", "connectionId", rc.ConnectionID, "err", cerr)
		}
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("connect %s: %w", rc.ConnectionID, err)
	}
	h.Logger.InfoContext(ctx, "connected", "userId", userID, "connectionId", rc.ConnectionID, "apiRequestId", rc.RequestID, "framed", framed)
	_ = h.Metrics.Emit(map[string]string{"Function": "connect"}, emf.Metric{Name: "ConnectionsOpened", Value: 1, Unit: emf.Count})
	if framed {
		return lambdaevents.APIGatewayProxyResponse{StatusCode: http.StatusOK,
			Headers: map[string]string{"Sec-WebSocket-Protocol": recovery.Subprotocol}}, nil
	}
	return ok(), nil
}

// Message is the $default route: a client frame records the user's activity in the
// register beside the user item (package dynamo's Touch), at most once per window; it
// changes no presence and writes nothing to the log, the user item or their streams.
func (h *Handler) Message(ctx context.Context, req lambdaevents.APIGatewayWebsocketProxyRequest) (lambdaevents.APIGatewayProxyResponse, error) {
	rc := req.RequestContext
	userID := UserID(rc)
	if userID == "" {
		var err error
		if userID, err = h.Owners.OpenedBy(ctx, rc.ConnectionID); err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("activity of %s: %w: %w", rc.ConnectionID, ErrNoUser, err)
		}
	}
	wrote, err := h.View.Touch(ctx, userID, eventTime(rc))
	if err != nil {
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("activity of %s: %w", rc.ConnectionID, err)
	}
	if wrote {
		_ = h.Metrics.Emit(map[string]string{"Function": "connect"}, emf.Metric{Name: "ActivityRecorded", Value: 1, Unit: emf.Count})
	}
	return ok(), nil
}

// ConnectOrMessage serves the $connect, recover and $default routes from one function
// (a recover follows its $connect at once, so it finds this function warm).
func (h *Handler) ConnectOrMessage(ctx context.Context, req lambdaevents.APIGatewayWebsocketProxyRequest) (lambdaevents.APIGatewayProxyResponse, error) {
	switch req.RequestContext.RouteKey {
	case "$connect":
		return h.Connect(ctx, req)
	case RecoverRoute:
		if h.Recovery != nil {
			return h.Recover(ctx, req)
		}
	}
	return h.Message(ctx, req)
}

// RecoverRoute is the route key of recover requests ({"action":"recover",...}).
const RecoverRoute = "recover"

// ReasonFor maps API Gateway's disconnect status code to a close reason: a close frame
// from either side is the client's doing; anything else (1006: no close frame, 1011 and
// the rest) means the connection was lost.
func ReasonFor(code int64) events.CloseReason {
	switch code {
	case 1000, 1001, 1005:
		return events.ReasonClient
	}
	return events.ReasonExpired
}

// Disconnect appends ConnectionClosed with the reason of the status code.
func (h *Handler) Disconnect(ctx context.Context, req lambdaevents.APIGatewayWebsocketProxyRequest) (lambdaevents.APIGatewayProxyResponse, error) {
	rc := req.RequestContext
	userID := UserID(rc)
	if userID == "" {
		var err error
		if userID, err = h.Owners.OpenedBy(ctx, rc.ConnectionID); err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("disconnect %s: %w: %w", rc.ConnectionID, ErrNoUser, err)
		}
	}
	reason := ReasonFor(rc.DisconnectStatusCode)
	if _, err := h.Log.Append(ctx, events.Closed(userID, rc.ConnectionID, eventTime(rc), reason)); err != nil {
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("disconnect %s: %w", rc.ConnectionID, err)
	}
	h.Logger.InfoContext(ctx, "disconnected", "userId", userID, "connectionId", rc.ConnectionID,
		"apiRequestId", rc.RequestID, "reason", string(reason), "statusCode", rc.DisconnectStatusCode)
	_ = h.Metrics.Emit(map[string]string{"Function": "disconnect", "Reason": string(reason)},
		emf.Metric{Name: "ConnectionsClosed", Value: 1, Unit: emf.Count})
	return ok(), nil
}
