package onlineapi_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/onlineapi"
)

// FuzzParse: no query panics the parser; a refusal is always a 400 with a stable code, and
// an accepted query is within the limits.
func FuzzParse(f *testing.F) {
	f.Add("userIds=a,b&limit=10")
	f.Add("nextToken=" + onlineapi.EncodeToken("u1"))
	f.Add("limit=-1&userIds=%00")
	f.Add("userIds=a&userIds=b,,c")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := onlineapi.Parse(raw)
		if err != nil {
			var he *httperr.Error
			if !errors.As(err, &he) || he.Status != http.StatusBadRequest || he.Code == "" || he.Message == "" {
				t.Fatalf("refusal %v is not a 400 JSON error", err)
			}
			return
		}
		if q.Limit < 1 || q.Limit > onlineapi.MaxLimit || len(q.UserIDs) > onlineapi.MaxUserIDs {
			t.Fatalf("accepted %+v", q)
		}
		for _, id := range q.UserIDs {
			if events.ValidateUserID(id) != nil {
				t.Fatalf("accepted user id %q", id)
			}
		}
		if q.After != "" {
			if back, err := onlineapi.DecodeToken(onlineapi.EncodeToken(q.After)); err != nil || back != q.After {
				t.Fatalf("token round trip of %q", q.After)
			}
		}
	})
}
