package onlineapi_test

import (
	"errors"
	"net/http"
	"net/url"
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
		if q.Limit < 0 || q.Limit > onlineapi.MaxLimit || len(q.UserIDs) > onlineapi.MaxUserIDs {
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

// FuzzUserIDQuery: every id that can connect (events.ValidateUserID) can be asked for,
// alone, comma-separated with another, or in repeated parameters, and the answer names
// exactly the ids asked for; an id that cannot connect is refused with a 400, never
// answered as another id.
func FuzzUserIDQuery(f *testing.F) {
	f.Add("1234", "5678")
	f.Add("x,y", "x")
	f.Add(" pad ", "pad")
	f.Add("a b", "a+b")
	f.Add("\xff", "\xfe")
	f.Add("\uFFFD", "%2C")
	f.Add("a&b=c", "a;b")
	f.Fuzz(func(t *testing.T, a, b string) {
		forms := map[string][]string{
			"userIds=" + url.QueryEscape(a):                                    {a},
			"userIds=" + url.QueryEscape(a) + "," + url.QueryEscape(b):         {a, b},
			"userIds=" + url.QueryEscape(a) + "&userIds=" + url.QueryEscape(b): {a, b},
			url.Values{"userIds": {a + "," + b}, "limit": {"5"}}.Encode():      {a, b},
			"userIds=%20" + url.QueryEscape(a) + "+," + url.QueryEscape(b):     {a, b},
		}
		for raw, asked := range forms {
			valid := true
			for _, id := range asked {
				valid = valid && events.ValidateUserID(id) == nil
			}
			q, err := onlineapi.Parse(raw)
			if !valid {
				if err == nil && !sameIDs(q.UserIDs, asked) {
					continue // an invalid id split or trimmed into valid ones is another question
				}
				if err == nil {
					t.Fatalf("%q: ids %q that cannot connect were answered", raw, asked)
				}
				var he *httperr.Error
				if !errors.As(err, &he) || he.Status != http.StatusBadRequest {
					t.Fatalf("%q: refusal %v is not a 400", raw, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%q: ids %q that can connect were refused: %v", raw, asked, err)
			}
			if !sameIDs(q.UserIDs, asked) {
				t.Fatalf("%q: asked %q, answered %q", raw, asked, q.UserIDs)
			}
		}
	})
}

// sameIDs reports whether got is want without duplicates, in order.
func sameIDs(got, want []string) bool {
	var dedup []string
	seen := map[string]bool{}
	for _, id := range want {
		if !seen[id] {
			seen[id] = true
			dedup = append(dedup, id)
		}
	}
	if len(got) != len(dedup) {
		return false
	}
	for i := range got {
		if got[i] != dedup[i] {
			return false
		}
	}
	return true
}
