package events

import (
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Source is the EventBridge source of every published event.
const Source = "wspresence"

// DetailType names a published event (the EventBridge detail-type).
type DetailType string

// The published event types.
const (
	DetailUserOnline           DetailType = "UserOnline"
	DetailUserOffline          DetailType = "UserOffline"
	DetailMessageDelivered     DetailType = "MessageDelivered"
	DetailMessageUndeliverable DetailType = "MessageUndeliverable"
)

// Published is an integration event. Its ID is stable across retries, so subscribers can
// de-duplicate on it.
type Published interface {
	// DetailType names the event.
	DetailType() DetailType
	// ID is the event's stable id (the detail's eventId).
	ID() string
}

// eventNamespace seeds the name-based UUIDs of published events.
var eventNamespace = uuid.MustParse("6f1b7a54-3c1e-4d8a-9e55-0c8f3b6a2d91")

// EventID derives a stable event id from the facts that identify an event: the same parts
// always give the same id, so a retried publication carries the id of the first.
// The id is the version-5 (SHA-1) UUID in eventNamespace of the name kind, NUL, and the
// parts joined by NUL, hashed from a buffer on the stack: the id's text is its one
// allocation.
func EventID(kind DetailType, parts ...string) string {
	var stack [256]byte
	name := append(stack[:0], eventNamespace[:]...)
	name = append(name, kind...)
	name = append(name, 0)
	for i, p := range parts {
		if i > 0 {
			name = append(name, 0)
		}
		name = append(name, p...)
	}
	sum := sha1.Sum(name)
	var id uuid.UUID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x50 // version 5
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id.String()
}

// UserOnline is published when a user's first connection opens while subscribers were
// last told the user is offline.
type UserOnline struct {
	EventID      string    `json:"eventId"`
	UserID       string    `json:"userId"`
	ConnectionID string    `json:"connectionId"`
	At           time.Time `json:"at"`
}

// NewUserOnline builds the UserOnline event caused by connectionID opening at at.
func NewUserOnline(userID, connectionID string, at time.Time) UserOnline {
	return UserOnline{EventID: EventID(DetailUserOnline, userID, connectionID), UserID: userID,
		ConnectionID: connectionID, At: at.UTC()}
}

// DetailType implements Published.
func (UserOnline) DetailType() DetailType { return DetailUserOnline }

// ID implements Published.
func (e UserOnline) ID() string { return e.EventID }

// UserOffline is published once the user's last connection has been closed for the whole
// grace period. At is when the last connection closed.
type UserOffline struct {
	EventID      string     `json:"eventId"`
	UserID       string     `json:"userId"`
	At           time.Time  `json:"at"`
	LastActivity *time.Time `json:"lastActivity"`
}

// NewUserOffline builds the UserOffline event of the offline period that began at since.
func NewUserOffline(userID string, since time.Time, lastActivity time.Time) UserOffline {
	e := UserOffline{EventID: EventID(DetailUserOffline, userID, since.UTC().Format(time.RFC3339Nano)),
		UserID: userID, At: since.UTC()}
	if !lastActivity.IsZero() {
		la := lastActivity.UTC()
		e.LastActivity = &la
	}
	return e
}

// DetailType implements Published.
func (UserOffline) DetailType() DetailType { return DetailUserOffline }

// ID implements Published.
func (e UserOffline) ID() string { return e.EventID }

// MessageDelivered is published when a message reached at least one live connection of
// its user. Connections counts the connections it reached.
type MessageDelivered struct {
	EventID     string    `json:"eventId"`
	MessageID   string    `json:"messageId"`
	UserID      string    `json:"userId"`
	Connections int       `json:"connections"`
	At          time.Time `json:"at"`
}

// NewMessageDelivered builds the MessageDelivered event of messageID for userID.
func NewMessageDelivered(messageID, userID string, connections int, at time.Time) MessageDelivered {
	return MessageDelivered{EventID: EventID(DetailMessageDelivered, messageID, userID), MessageID: messageID,
		UserID: userID, Connections: connections, At: at.UTC()}
}

// DetailType implements Published.
func (MessageDelivered) DetailType() DetailType { return DetailMessageDelivered }

// ID implements Published.
func (e MessageDelivered) ID() string { return e.EventID }

// UndeliverableReason says why a message reached no connection.
type UndeliverableReason string

// The reasons a message is undeliverable.
const (
	// UndeliverableOffline: the user had no live connection.
	UndeliverableOffline UndeliverableReason = "offline"
	// UndeliverableGone: every connection the view listed turned out to be gone.
	UndeliverableGone UndeliverableReason = "gone"
	// UndeliverableFailed: posting failed for another reason.
	UndeliverableFailed UndeliverableReason = "failed"
)

// MessageUndeliverable is published when a message reached no connection of its user.
type MessageUndeliverable struct {
	EventID   string              `json:"eventId"`
	MessageID string              `json:"messageId"`
	UserID    string              `json:"userId"`
	Reason    UndeliverableReason `json:"reason"`
	At        time.Time           `json:"at"`
}

// NewMessageUndeliverable builds the MessageUndeliverable event of messageID for userID.
func NewMessageUndeliverable(messageID, userID string, reason UndeliverableReason, at time.Time) MessageUndeliverable {
	return MessageUndeliverable{EventID: EventID(DetailMessageUndeliverable, messageID, userID), MessageID: messageID,
		UserID: userID, Reason: reason, At: at.UTC()}
}

// DetailType implements Published.
func (MessageUndeliverable) DetailType() DetailType { return DetailMessageUndeliverable }

// ID implements Published.
func (e MessageUndeliverable) ID() string { return e.EventID }

// Envelope is the EventBridge event envelope, the shape AWS subscribers receive. The local
// runtime streams the same shape so subscriber code is portable.
type Envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType DetailType      `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       time.Time       `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

// NewEnvelope wraps p in the EventBridge envelope, using p's event id as the envelope id.
func NewEnvelope(p Published, account, region string, at time.Time) (Envelope, error) {
	detail, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s detail: %w", p.DetailType(), err)
	}
	return Envelope{Version: "0", ID: p.ID(), DetailType: p.DetailType(), Source: Source, Account: account,
		Time: at.UTC().Truncate(time.Second), Region: region, Resources: []string{}, Detail: detail}, nil
}

// Stored is a published event read back from where it was recorded (an outbox): its type,
// id and detail exactly as encoded. It publishes as the event it was.
type Stored struct {
	Type    DetailType
	EventID string
	Detail  json.RawMessage
}

// Store encodes p for an outbox.
func Store(p Published) (Stored, error) {
	if s, ok := p.(Stored); ok {
		return s, nil
	}
	detail, err := json.Marshal(p)
	if err != nil {
		return Stored{}, fmt.Errorf("encode %s detail: %w", p.DetailType(), err)
	}
	return Stored{Type: p.DetailType(), EventID: p.ID(), Detail: detail}, nil
}

// DetailType implements Published.
func (s Stored) DetailType() DetailType { return s.Type }

// ID implements Published.
func (s Stored) ID() string { return s.EventID }

// MarshalJSON writes the detail as it was recorded.
func (s Stored) MarshalJSON() ([]byte, error) { return s.Detail, nil }
