// Package recovery is the core of missed-message recovery, shared by both runtimes: the
// subprotocol a client opts in with, the JSON frames of the protocol (docs/api.md,
// "Recovery") and the answer to a client's recover request, decided from the user's
// stream. It holds no state and imports no store: the runtimes read their streams and
// post the frames; this package decides what the answer is. Its functions are safe for
// concurrent use.
package recovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Subprotocol is the WebSocket subprotocol a client asks for (Sec-WebSocket-Protocol) to
// receive JSON frames with positions and to recover; other clients get raw bodies.
const Subprotocol = "wspresence.v1"

// Requested reports whether a Sec-WebSocket-Protocol header value (a comma-separated
// list; several header lines may be joined with commas) asks for Subprotocol.
func Requested(header string) bool {
	for _, p := range strings.Split(header, ",") {
		if strings.TrimSpace(p) == Subprotocol {
			return true
		}
	}
	return false
}

// Reason says why a recover answered recovered:false.
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

// Message is a message frame: one message at its position in the user's stream.
type Message struct {
	Type      string `json:"type"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	MessageID string `json:"messageId"`
	Body      string `json:"body"`
}

// MessageFrame returns the frame of a message at epoch/offset.
func MessageFrame(epoch string, offset int64, messageID, body string) []byte {
	b, _ := json.Marshal(Message{Type: "message", Epoch: epoch, Offset: offset, MessageID: messageID, Body: body})
	return b
}

// Recovered is the answer to a recover request, exactly one per request.
type Recovered struct {
	Type      string `json:"type"`
	Recovered bool   `json:"recovered"`
	Reason    Reason `json:"reason,omitempty"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	Replayed  int    `json:"replayed"`
}

// Frame returns the recovered frame.
func (r Recovered) Frame() []byte {
	r.Type = "recovered"
	b, _ := json.Marshal(r)
	return b
}

// CodeInvalidFrame is the error code of a malformed or repeated recover request.
const CodeInvalidFrame = "invalid_frame"

// ErrorFrame returns an error frame with a stable code and a message for people.
func ErrorFrame(code, message string) []byte {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", code, message})
	return b
}

// Position is a place in a user's stream.
type Position struct {
	Epoch  string
	Offset int64
}

// Request is a client's recover request: resume after At, or start fresh when At is nil.
type Request struct {
	At *Position
}

// ErrInvalidRequest is returned by ParseRequest for a frame that is not a recover request.
var ErrInvalidRequest = errors.New("invalid recover request")

// ParseRequest decodes {"action":"recover"} or {"action":"recover","epoch":"E","offset":7}.
// An epoch without an offset (or the reverse), a negative offset or an empty epoch is
// refused with ErrInvalidRequest.
func ParseRequest(frame []byte) (Request, error) {
	var in struct {
		Action string  `json:"action"`
		Epoch  *string `json:"epoch"`
		Offset *int64  `json:"offset"`
	}
	if err := json.Unmarshal(frame, &in); err != nil {
		return Request{}, fmt.Errorf("%w: not a JSON object", ErrInvalidRequest)
	}
	switch {
	case in.Action != "recover":
		return Request{}, fmt.Errorf("%w: action is not recover", ErrInvalidRequest)
	case in.Epoch == nil && in.Offset == nil:
		return Request{}, nil
	case in.Epoch == nil || in.Offset == nil:
		return Request{}, fmt.Errorf("%w: epoch and offset go together", ErrInvalidRequest)
	case *in.Epoch == "" || *in.Offset < 0:
		return Request{}, fmt.Errorf("%w: an empty epoch or a negative offset", ErrInvalidRequest)
	}
	return Request{At: &Position{Epoch: *in.Epoch, Offset: *in.Offset}}, nil
}

// Stream is what a runtime read of a user's stream for a recover: the current epoch and
// top (the last offset given, 0 for none), and the offsets still kept after the client's
// position, in ascending order (those inside the window only).
type Stream struct {
	Epoch string
	Top   int64
	Kept  []int64
}

// Plan is the decision on a recover request: the answer, and when it is recovered the
// offsets to replay before it, in order: those after the client's position up to
// Answer.Offset (Answer.Replayed of them).
type Plan struct {
	Answer Recovered
}

// Replays reports whether the message at offset is replayed before the answer.
func (p Plan) Replays(req Request, offset int64) bool {
	return p.Answer.Recovered && req.At != nil && offset > req.At.Offset && offset <= p.Answer.Offset
}

// Decide answers req from the stream. Without a window (no history kept) every request
// with a position behind the top is answered too_old. A position in the current epoch
// whose next offsets up to the top are all kept replays them, and the kept offsets past
// the top that follow without a hole (recovered; offset is the last replayed); a hole up
// to the top means messages are gone (too_old).
func Decide(req Request, s Stream, windowOn bool) Plan {
	top := Recovered{Epoch: s.Epoch, Offset: s.Top}
	switch {
	case req.At == nil:
		top.Reason = ReasonFresh
		return Plan{Answer: top}
	case req.At.Epoch != s.Epoch:
		top.Reason = ReasonEpochChanged
		return Plan{Answer: top}
	case req.At.Offset > s.Top:
		top.Reason = ReasonAhead
		return Plan{Answer: top}
	case req.At.Offset == s.Top:
		return Plan{Answer: Recovered{Recovered: true, Epoch: s.Epoch, Offset: s.Top}}
	case !windowOn:
		top.Reason = ReasonTooOld
		return Plan{Answer: top}
	}
	next, n := req.At.Offset+1, 0
	for _, o := range s.Kept {
		if o < next {
			continue
		}
		if o != next {
			break
		}
		n++
		next++
	}
	if next <= s.Top {
		top.Reason = ReasonTooOld
		return Plan{Answer: top}
	}
	return Plan{Answer: Recovered{Recovered: true, Epoch: s.Epoch, Offset: next - 1, Replayed: n}}
}

// Complete reports whether kept holds every offset after the position at up to top, the
// condition for Decide to replay (a runtime whose writes of allocated offsets may still
// be in flight reads again while it is false).
func Complete(at Position, kept []int64, top int64) bool {
	next := at.Offset + 1
	for _, o := range kept {
		if o == next {
			next++
		}
	}
	return next > top
}

// Close codes of a client that asked for Subprotocol and is refused at the handshake: the
// local runtime upgrades it and closes it at once with one of them (a browser cannot read
// an HTTP status).
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
