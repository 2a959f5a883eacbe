package events

import (
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"
)

// Type names a connection-log event.
type Type string

// The connection-log event types.
const (
	TypeConnectionOpened Type = "ConnectionOpened"
	TypeConnectionClosed Type = "ConnectionClosed"
	TypeActivityRecorded Type = "ActivityRecorded"
)

// CloseReason says why a connection closed.
type CloseReason string

// The reasons a connection closes.
const (
	// ReasonClient: the client (or API Gateway's $disconnect) closed the connection.
	ReasonClient CloseReason = "client"
	// ReasonGone: posting to the connection answered 410 Gone.
	ReasonGone CloseReason = "gone"
	// ReasonSwept: the sweeper found the connection dead.
	ReasonSwept CloseReason = "swept"
	// ReasonExpired: missed heartbeats, idle too long, or lost in a crash.
	ReasonExpired CloseReason = "expired"
	// ReasonShutdown: the local runtime stopped.
	ReasonShutdown CloseReason = "shutdown"
)

// Valid reports whether r is one of the known reasons.
func (r CloseReason) Valid() bool {
	switch r {
	case ReasonClient, ReasonGone, ReasonSwept, ReasonExpired, ReasonShutdown:
		return true
	}
	return false
}

// MaxUserIDBytes bounds the size of a user id everywhere (tokens, messages, queries).
const MaxUserIDBytes = 256

// MaxConnectionIDBytes bounds the size of a connection id.
const MaxConnectionIDBytes = 128

// ErrInvalidEvent is wrapped by every validation failure of a connection event.
var ErrInvalidEvent = errors.New("invalid connection event")

// ConnectionEvent is one entry of the append-only connection log. Which fields are set
// depends on Type: SourceIP and UserAgent only for ConnectionOpened, Reason only for
// ConnectionClosed.
type ConnectionEvent struct {
	Type         Type        `json:"type"`
	UserID       string      `json:"userId"`
	ConnectionID string      `json:"connectionId"`
	At           time.Time   `json:"at"`
	SourceIP     string      `json:"sourceIp,omitempty"`
	UserAgent    string      `json:"userAgent,omitempty"`
	Reason       CloseReason `json:"reason,omitempty"`
}

// Opened builds a ConnectionOpened event.
func Opened(userID, connectionID string, at time.Time, sourceIP, userAgent string) ConnectionEvent {
	return ConnectionEvent{Type: TypeConnectionOpened, UserID: userID, ConnectionID: connectionID,
		At: at.UTC(), SourceIP: sourceIP, UserAgent: userAgent}
}

// Closed builds a ConnectionClosed event.
func Closed(userID, connectionID string, at time.Time, reason CloseReason) ConnectionEvent {
	return ConnectionEvent{Type: TypeConnectionClosed, UserID: userID, ConnectionID: connectionID,
		At: at.UTC(), Reason: reason}
}

// Activity builds an ActivityRecorded event.
func Activity(userID, connectionID string, at time.Time) ConnectionEvent {
	return ConnectionEvent{Type: TypeActivityRecorded, UserID: userID, ConnectionID: connectionID, At: at.UTC()}
}

// Key is the event's natural idempotency key: appending two events with the same key
// stores only the first. A connection opens once and closes once, whatever the reason, so
// a retried $connect or $disconnect (or a close reported twice for different reasons)
// appends nothing twice; activity is keyed by its time.
func (e ConnectionEvent) Key() string {
	switch e.Type {
	case TypeActivityRecorded:
		return string(e.Type) + "#" + e.ConnectionID + "#" + strconv.FormatInt(e.At.UnixNano(), 10)
	default:
		return string(e.Type) + "#" + e.ConnectionID
	}
}

// Validate reports what is wrong with e, wrapping ErrInvalidEvent.
func (e ConnectionEvent) Validate() error {
	var errs []error
	switch e.Type {
	case TypeConnectionOpened, TypeActivityRecorded:
	case TypeConnectionClosed:
		if !e.Reason.Valid() {
			errs = append(errs, fmt.Errorf("unknown close reason %q", e.Reason))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown type %q", e.Type))
	}
	if err := ValidateUserID(e.UserID); err != nil {
		errs = append(errs, err)
	}
	if e.ConnectionID == "" || len(e.ConnectionID) > MaxConnectionIDBytes {
		errs = append(errs, fmt.Errorf("connectionId must be 1 to %d bytes", MaxConnectionIDBytes))
	}
	if e.At.IsZero() {
		errs = append(errs, errors.New("at is required"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, errors.Join(errs...))
	}
	return nil
}

// ValidateUserID checks that id is a usable user id: 1 to MaxUserIDBytes bytes of valid
// UTF-8, with no control character (Unicode Cc, C1 included), no comma (the separator of ?userIds=a,b, on AWS also
// the separator API Gateway joins repeated parameters with) and no white space at either
// end (trimmed from a query), so that every id that can connect can also be queried. The
// same rule holds for token claims, messages and queries on both runtimes.
func ValidateUserID(id string) error {
	if id == "" {
		return errors.New("user id is empty")
	}
	if len(id) > MaxUserIDBytes {
		return fmt.Errorf("user id is longer than %d bytes", MaxUserIDBytes)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("user id: %w", ErrInvalidUTF8)
	}
	for _, r := range id {
		if unicode.IsControl(r) { // Cc: C0, DEL and C1 (U+0080 to U+009F)
			return errors.New("user id contains a control character")
		}
		if r == ',' {
			return errors.New("user id contains a comma")
		}
	}
	first, _ := utf8.DecodeRuneInString(id)
	last, _ := utf8.DecodeLastRuneInString(id)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return errors.New("user id starts or ends with white space")
	}
	return nil
}
