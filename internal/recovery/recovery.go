package recovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/wspresence/wspresence/events"
)

// Subprotocol is the WebSocket subprotocol a client asks for to opt in.
const Subprotocol = "wspresence.v1"

// Offered reports whether the handshake request h asks for Subprotocol.
func Offered(h http.Header) bool {
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if strings.TrimSpace(p) == Subprotocol {
				return true
			}
		}
	}
	return false
}

// Close codes of an opted-in client refused at the handshake (upgraded, then closed at
// once: a browser cannot read an HTTP status).
const (
	// CloseTokenExpired: the token expired; get a new one and retry.
	CloseTokenExpired = 4001
	// CloseTokenRefused: the token is refused for another reason; do not retry.
	CloseTokenRefused = 4003
	// CloseTooManyConnections: the user is at the connection cap; do not retry.
	CloseTooManyConnections = 4029
	// CloseUnavailable: the server cannot take the connection now; retry with backoff.
	CloseUnavailable = 4503
)

// Reason says why a recover did not recover.
type Reason string

// The reasons of a recovered:false answer.
const (
	// ReasonFresh: the client sent no position (not a discontinuity).
	ReasonFresh Reason = "fresh"
	// ReasonEpochChanged: the client's epoch is not the stream's.
	ReasonEpochChanged Reason = "epoch_changed"
	// ReasonTooOld: messages after the client's position are gone (outside the window).
	ReasonTooOld Reason = "too_old"
	// ReasonAhead: the client's offset is beyond the top of the stream.
	ReasonAhead Reason = "ahead"
)

// CodeInvalidFrame is the error code of a malformed or repeated recover.
const CodeInvalidFrame = "invalid_frame"

// ActionRecover is the action of a recover request.
const ActionRecover = "recover"

// Request is a client's recover request: {"action":"recover","epoch":"E","offset":7}, or
// {"action":"recover"} for a fresh start (HasPosition false).
type Request struct {
	HasPosition bool
	Epoch       string
	Offset      int64
}

// ErrInvalid is wrapped by ParseRequest's errors.
var ErrInvalid = errors.New("invalid recover request")

// ParseRequest reads a recover request: an epoch and an offset (a non-negative integer)
// together, or neither.
func ParseRequest(data []byte) (Request, error) {
	if events.CheckJSONText(data) != nil {
		return Request{}, fmt.Errorf("%w: not JSON text", ErrInvalid)
	}
	var raw struct {
		Action string           `json:"action"`
		Epoch  *json.RawMessage `json:"epoch"`
		Offset *json.RawMessage `json:"offset"`
	}
	if err := json.Unmarshal(data, &raw); err != nil || raw.Action != ActionRecover {
		return Request{}, fmt.Errorf("%w: want {\"action\":\"recover\",\"epoch\":\"...\",\"offset\":N}", ErrInvalid)
	}
	if raw.Epoch == nil && raw.Offset == nil {
		return Request{}, nil
	}
	if raw.Epoch == nil || raw.Offset == nil {
		return Request{}, fmt.Errorf("%w: epoch and offset go together", ErrInvalid)
	}
	var r Request
	if err := json.Unmarshal(*raw.Epoch, &r.Epoch); err != nil || r.Epoch == "" {
		return Request{}, fmt.Errorf("%w: epoch must be a non-empty string", ErrInvalid)
	}
	off, err := strconv.ParseInt(string(bytes.TrimSpace(*raw.Offset)), 10, 64)
	if err != nil || off < 0 {
		return Request{}, fmt.Errorf("%w: offset must be a non-negative integer", ErrInvalid)
	}
	r.HasPosition, r.Offset = true, off
	return r, nil
}

// Recovered is the answer to a recover request, sent after the replayed messages.
type Recovered struct {
	Type      string `json:"type"`
	Recovered bool   `json:"recovered"`
	Reason    Reason `json:"reason,omitempty"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	Replayed  int    `json:"replayed"`
}

// Frame encodes the answer.
func (r Recovered) Frame() []byte {
	r.Type = "recovered"
	b, _ := json.Marshal(r)
	return b
}

// Decision is what a recover request gets.
type Decision struct {
	// Replay is set when the messages after From, up to the top, are to be replayed
	// (none when From is the top); the answer is then recovered:true at the last offset
	// replayed, unless the first message after From is gone (TooOld).
	Replay bool
	From   int64
	// Answer is the recovered:false answer when Replay is false.
	Answer Recovered
}

// Decide decides a recover request against the user's stream: its epoch and its top
// offset now. keeping is false when the runtime keeps no history (a recovery window of
// 0): every request is then answered too_old.
func Decide(req Request, epoch string, top int64, keeping bool) Decision {
	no := func(r Reason) Decision {
		return Decision{Answer: Recovered{Reason: r, Epoch: epoch, Offset: top}}
	}
	switch {
	case !keeping:
		return no(ReasonTooOld)
	case !req.HasPosition:
		return no(ReasonFresh)
	case req.Epoch != epoch:
		return no(ReasonEpochChanged)
	case req.Offset > top:
		return no(ReasonAhead)
	}
	return Decision{Replay: true, From: req.Offset}
}

// TooOld is the answer when the messages after the client's position are gone.
func TooOld(epoch string, top int64) Recovered {
	return Recovered{Reason: ReasonTooOld, Epoch: epoch, Offset: top}
}

// Done is the answer after a replay that reached offset with replayed messages.
func Done(epoch string, offset int64, replayed int) Recovered {
	return Recovered{Recovered: true, Epoch: epoch, Offset: offset, Replayed: replayed}
}

// message is a message frame: the body with its position.
type message struct {
	Type      string `json:"type"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	MessageID string `json:"messageId"`
	Body      string `json:"body"`
}

// MessageFrame encodes a message frame.
func MessageFrame(epoch string, offset int64, messageID, body string) []byte {
	b, _ := json.Marshal(message{Type: "message", Epoch: epoch, Offset: offset, MessageID: messageID, Body: body})
	return b
}

// ErrorFrame encodes an error frame: {"type":"error","code":...,"message":...}.
func ErrorFrame(code, msg string) []byte {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", code, msg})
	return b
}
