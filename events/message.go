package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits of a message, as API Gateway enforces them on AWS.
const (
	// MaxBodyBytes is the largest Body: API Gateway's 128 KB WebSocket frame limit.
	MaxBodyBytes = 128 * 1024
	// MaxRecipients is the most users one message may address.
	MaxRecipients = 100
	// MaxMessageIDBytes bounds a caller-chosen MessageId.
	MaxMessageIDBytes = 128
)

// ErrInvalidMessage is wrapped by every error DecodeMessages returns for bad input.
var ErrInvalidMessage = errors.New("invalid message")

// Message is what other systems enqueue for delivery: the original contract
// {"UserId": "...", "Body": "..."}, with camelCase names accepted too. MessageId (optional)
// makes enqueueing idempotent; UserIds (optional, instead of UserId) addresses several
// users at once.
type Message struct {
	MessageID string   `json:"MessageId,omitempty"`
	UserID    string   `json:"UserId,omitempty"`
	UserIDs   []string `json:"UserIds,omitempty"`
	Body      string   `json:"Body"`
}

// Recipients lists the users the message is for, without duplicates.
func (m Message) Recipients() []string {
	if m.UserID != "" {
		return []string{m.UserID}
	}
	seen := make(map[string]bool, len(m.UserIDs))
	out := make([]string, 0, len(m.UserIDs))
	for _, id := range m.UserIDs {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// wireMessage decodes a message with pointers, so that a missing field and a field of the
// wrong type can be told apart. encoding/json matches names case-insensitively, which is
// how "userId" and "body" are accepted.
type wireMessage struct {
	MessageID *string   `json:"MessageId"`
	UserID    *string   `json:"UserId"`
	UserIDs   *[]string `json:"UserIds"`
	Body      *string   `json:"Body"`
}

// DecodeMessage decodes and validates one message object. Errors wrap ErrInvalidMessage
// and say what is wrong in words fit for the caller; text that is not UTF-8 (raw bytes or
// an escaped unpaired surrogate) is refused with an error that also wraps ErrInvalidUTF8,
// never rewritten.
func DecodeMessage(data []byte) (Message, error) {
	if err := CheckJSONText(data); err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	return decodeMessage(data)
}

// decodeMessage is DecodeMessage for data already checked by CheckJSONText.
func decodeMessage(data []byte) (Message, error) {
	var w wireMessage
	if err := strictUnmarshal(data, &w); err != nil {
		return Message{}, err
	}
	return w.validate("")
}

// DecodeMessages decodes one message object or a JSON array of them (at most max; 0
// means no limit). Errors wrap ErrInvalidMessage (and ErrInvalidUTF8, as DecodeMessage's)
// and name the offending element.
func DecodeMessages(data []byte, max int) ([]Message, error) {
	if err := CheckJSONText(data); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '[' {
		m, err := decodeMessage(data)
		if err != nil {
			return nil, err
		}
		return []Message{m}, nil
	}
	var raw []json.RawMessage
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: the array is empty", ErrInvalidMessage)
	}
	if max > 0 && len(raw) > max {
		return nil, fmt.Errorf("%w: %d messages in one request, at most %d", ErrInvalidMessage, len(raw), max)
	}
	out := make([]Message, 0, len(raw))
	for i, r := range raw {
		var w wireMessage
		if err := strictUnmarshal(r, &w); err != nil {
			return nil, fmt.Errorf("message [%d]: %w", i, err)
		}
		m, err := w.validate(fmt.Sprintf("message [%d]: ", i))
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// strictUnmarshal decodes the one JSON value data holds into v. A value that decodes is
// read once, by json.Unmarshal (its decoder state is pooled); one that does not is read
// again by a decoder of its own, from a zero v, for the error's words.
func strictUnmarshal[T any](data []byte, v *T) error {
	if json.Unmarshal(data, v) == nil {
		return nil
	}
	var zero T
	*v = zero
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field != "" {
				return fmt.Errorf("%w: field %s must be a %s", ErrInvalidMessage, te.Field, jsonKind(te.Type.Kind().String()))
			}
			return fmt.Errorf("%w: expected a JSON object", ErrInvalidMessage)
		}
		return fmt.Errorf("%w: malformed JSON", ErrInvalidMessage)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrInvalidMessage)
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "slice":
		return "array"
	case "struct", "map":
		return "object"
	}
	return goKind
}

func (w wireMessage) validate(prefix string) (Message, error) {
	var problems []string
	var m Message
	if w.MessageID != nil {
		m.MessageID = *w.MessageID
		if m.MessageID == "" || len(m.MessageID) > MaxMessageIDBytes || !utf8.ValidString(m.MessageID) {
			problems = append(problems, fmt.Sprintf("MessageId must be 1 to %d bytes of UTF-8", MaxMessageIDBytes))
		}
	}
	switch {
	case w.UserID != nil && w.UserIDs != nil:
		problems = append(problems, "give UserId or UserIds, not both")
	case w.UserID != nil:
		m.UserID = *w.UserID
		if err := ValidateUserID(m.UserID); err != nil {
			problems = append(problems, "UserId: "+err.Error())
		}
	case w.UserIDs != nil:
		m.UserIDs = *w.UserIDs
		if len(m.UserIDs) == 0 {
			problems = append(problems, "UserIds is empty")
		}
		if len(m.UserIDs) > MaxRecipients {
			problems = append(problems, fmt.Sprintf("UserIds has %d ids, at most %d", len(m.UserIDs), MaxRecipients))
		}
		for i, id := range m.UserIDs {
			if err := ValidateUserID(id); err != nil {
				problems = append(problems, fmt.Sprintf("UserIds[%d]: %v", i, err))
				break
			}
		}
	default:
		problems = append(problems, "UserId is required")
	}
	if w.Body == nil {
		problems = append(problems, "Body is required")
	} else {
		m.Body = *w.Body
		if len(m.Body) > MaxBodyBytes {
			problems = append(problems, fmt.Sprintf("Body is %d bytes, at most %d", len(m.Body), MaxBodyBytes))
		}
	}
	if len(problems) > 0 {
		return Message{}, fmt.Errorf("%w: %s%s", ErrInvalidMessage, prefix, strings.Join(problems, "; "))
	}
	return m, nil
}
