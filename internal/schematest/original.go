package schematest

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/wspresence/wspresence/schemas"
)

// The reply shapes as a typed client of the original service reads them: non-nullable
// DateTime and bool fields (.NET's System.Text.Json refuses null for both, and Go's
// encoding/json would silently leave zero, so the types below refuse it explicitly), and
// unknown fields ignored.
type (
	// OriginalUser is one element of GET /user/online.
	OriginalUser struct {
		UserId       string
		IsOnline     NonNullBool
		LastActivity NonNullTime
	}
	// OriginalUserStatus is the reply of GET /user/{userId}/online.
	OriginalUserStatus struct {
		Status string `json:"status"`
	}
	// NonNullTime is a time.Time that refuses JSON null.
	NonNullTime time.Time
	// NonNullBool is a bool that refuses JSON null.
	NonNullBool bool
)

var errNull = errors.New("null where the original client expects a value")

// UnmarshalJSON refuses null, then reads an RFC 3339 time.
func (t *NonNullTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return errNull
	}
	return (*time.Time)(t).UnmarshalJSON(b)
}

// UnmarshalJSON refuses null, then reads a bool.
func (v *NonNullBool) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return errNull
	}
	return json.Unmarshal(b, (*bool)(v))
}

// DecodeOriginalList decodes a GET /user/online reply as the original's typed client does
// (after checking it against its schema), failing the test if it cannot.
func DecodeOriginalList(t testing.TB, body []byte) []OriginalUser {
	t.Helper()
	Check(t, schemas.UserOnlineReply, body)
	var out []OriginalUser
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("a typed client of the original cannot read %s: %v", body, err)
	}
	return out
}

// DecodeOriginalStatus decodes a GET /user/{userId}/online reply as the original's typed
// client does (after checking it against its schema).
func DecodeOriginalStatus(t testing.TB, body []byte) OriginalUserStatus {
	t.Helper()
	Check(t, schemas.UserStatusReply, body)
	var out OriginalUserStatus
	if err := json.Unmarshal(body, &out); err != nil || (out.Status != "online" && out.Status != "offline") {
		t.Fatalf("a typed client of the original cannot read %s: %v", body, err)
	}
	return out
}
