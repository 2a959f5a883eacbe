package onlineapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/onlineapi"
	"github.com/wspresence/wspresence/internal/presence"
)

func TestParseGood(t *testing.T) {
	cases := map[string]onlineapi.Query{
		"":                      {},
		"limit=5":               {Limit: 5},
		"userIds=a,b":           {UserIDs: []string{"a", "b"}},
		"userIds=a&userIds=b,a": {UserIDs: []string{"a", "b"}},
		"userIds=+a+,%20b":      {UserIDs: []string{"a", "b"}},
		"nextToken=" + onlineapi.EncodeToken("u7") + "&limit=1000": {After: "u7", Limit: 1000},
		"nextToken=" + onlineapi.EncodeToken("u7"):                 {After: "u7", Limit: onlineapi.DefaultLimit},
		"other=ignored": {},
	}
	for raw, want := range cases {
		got, err := onlineapi.Parse(raw)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", raw, got, err, want)
		}
	}
}

func TestParseBad(t *testing.T) {
	ids := make([]string, 101)
	for i := range ids {
		ids[i] = "u" + strings.Repeat("x", i)
	}
	cases := map[string]string{
		"limit=0":                             httperr.CodeInvalidLimit,
		"limit=1001":                          httperr.CodeInvalidLimit,
		"limit=ten":                           httperr.CodeInvalidLimit,
		"limit=":                              httperr.CodeInvalidLimit,
		"nextToken=garbage":                   httperr.CodeInvalidToken,
		"nextToken=v1.!!!":                    httperr.CodeInvalidToken,
		"nextToken=":                          httperr.CodeInvalidToken,
		"userIds=":                            httperr.CodeInvalidUserIDs,
		"userIds=a,,b":                        httperr.CodeInvalidUserIDs,
		"userIds=a%00b":                       httperr.CodeInvalidUserIDs,
		"userIds=" + strings.Repeat("x", 300): httperr.CodeInvalidUserIDs,
		"userIds=" + strings.Join(ids, ","):   httperr.CodeTooManyUserIDs,
		"userIds=%zz":                         httperr.CodeInvalidRequest,
		strings.Repeat("a", 70000):            httperr.CodeInvalidRequest,
	}
	for raw, code := range cases {
		_, err := onlineapi.Parse(raw)
		var he *httperr.Error
		if !errors.As(err, &he) || he.Status != http.StatusBadRequest || he.Code != code {
			t.Errorf("Parse(%.40q) = %v; want 400 %s", raw, err, code)
		}
	}
}

func TestPage(t *testing.T) {
	q := onlineapi.Query{Limit: 2}
	users := []onlineapi.Status{{UserID: "a"}, {UserID: "b"}, {UserID: "c"}}
	page, next := onlineapi.Page(q, users)
	if len(page) != 2 || next == "" {
		t.Fatalf("page %v next %q", page, next)
	}
	if after, err := onlineapi.DecodeToken(next); err != nil || after != "b" {
		t.Fatalf("next token decodes to %q, %v", after, err)
	}
	if _, next := onlineapi.Page(q, users[:2]); next != "" {
		t.Fatalf("last page has a next token %q", next)
	}
}

// fakeView holds n online users u000000, u000001, ...
type fakeView struct{ n int }

func (v fakeView) Users(_ context.Context, ids []string) ([]presence.Status, error) {
	out := make([]presence.Status, len(ids))
	for i, id := range ids {
		out[i] = presence.Status{UserID: id}
	}
	return out, nil
}

func (v fakeView) OnlineUsers(_ context.Context, after string, limit int) ([]presence.Status, error) {
	var out []presence.Status
	for i := 0; i < v.n && len(out) < limit; i++ {
		if id := fmt.Sprintf("u%06d", i); id > after {
			out = append(out, presence.Status{UserID: id, Connections: 1, LastActivity: time.Unix(int64(i), 0)})
		}
	}
	return out, nil
}

// Without limit the list is every online user, never cut off silently: past
// MaxUnpagedUsers the request is refused with a 413 that says how to page.
func TestAnswerWithoutLimit(t *testing.T) {
	q, _ := onlineapi.Parse("")
	for _, n := range []int{0, 1, onlineapi.MaxLimit, 2*onlineapi.MaxLimit + 500, onlineapi.MaxUnpagedUsers} {
		out, next, err := onlineapi.Answer(context.Background(), fakeView{n}, q)
		if err != nil || next != "" || len(out) != n {
			t.Fatalf("%d online: %d answered, next %q, %v", n, len(out), next, err)
		}
		for i, s := range out {
			if s.UserID != fmt.Sprintf("u%06d", i) || !s.IsOnline {
				t.Fatalf("%d online: element %d is %+v", n, i, s)
			}
		}
	}
	_, _, err := onlineapi.Answer(context.Background(), fakeView{onlineapi.MaxUnpagedUsers + 1}, q)
	var he *httperr.Error
	if !errors.As(err, &he) || he.Status != http.StatusRequestEntityTooLarge || he.Code != httperr.CodeTooManyResults {
		t.Fatalf("past the cap: %v", err)
	}
	// A paged request still pages.
	q, _ = onlineapi.Parse("limit=10")
	out, next, err := onlineapi.Answer(context.Background(), fakeView{onlineapi.MaxUnpagedUsers + 1}, q)
	if err != nil || len(out) != 10 || next == "" {
		t.Fatalf("paged: %d, %q, %v", len(out), next, err)
	}
}
