// Package httperr turns errors into HTTP responses in one place. Errors meant for the
// client are *Error values with a status and a stable code; anything else is logged and
// answered with a bare 500, so internal error text never reaches a client.
package httperr

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
)

// Stable error codes.
const (
	CodeInvalidRequest  = "invalid_request"
	CodeInvalidMessage  = "invalid_message"
	CodeInvalidUTF8     = "invalid_utf8"
	CodeInvalidUserIDs  = "invalid_user_ids"
	CodeTooManyUserIDs  = "too_many_user_ids"
	CodeTooManyResults  = "too_many_results"
	CodeInvalidLimit    = "invalid_limit"
	CodeInvalidToken    = "invalid_next_token"
	CodeRequestTooLarge = "request_too_large"
	CodeUnauthorized    = "unauthorized"
	CodeNotFound        = "not_found"
	CodeMethod          = "method_not_allowed"
	CodeUnavailable     = "unavailable"
	CodeTooMany         = "too_many_connections"
	CodeInternal        = "internal"
	CodeGone            = "events_pruned"
	CodeDamaged         = "damaged"
	CodeEpochChanged    = "events_epoch_changed"
	CodeHeldFull        = "messages_held_full"
)

// Error is an error fit for the client: its Message is shown as is.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New returns an *Error.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// BadRequest returns a 400 *Error.
func BadRequest(code, message string) *Error { return New(http.StatusBadRequest, code, message) }

// Write answers err: an *Error in err's chain as itself, anything else as a 500 whose cause
// is logged with the request's method and path.
func Write(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var e *Error
	if !errors.As(err, &e) {
		log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		e = New(http.StatusInternalServerError, CodeInternal, "internal error")
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="wspresence"`)
	}
	WriteJSON(w, e.Status, e)
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
