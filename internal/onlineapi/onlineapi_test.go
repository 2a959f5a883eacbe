package onlineapi_test

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/onlineapi"
)

func TestParseGood(t *testing.T) {
	cases := map[string]onlineapi.Query{
		"":                      {Limit: 100},
		"limit=5":               {Limit: 5},
		"userIds=a,b":           {UserIDs: []string{"a", "b"}, Limit: 100},
		"userIds=a&userIds=b,a": {UserIDs: []string{"a", "b"}, Limit: 100},
		"userIds=+a+,%20b":      {UserIDs: []string{"a", "b"}, Limit: 100},
		"nextToken=" + onlineapi.EncodeToken("u7") + "&limit=1000": {After: "u7", Limit: 1000},
		"other=ignored": {Limit: 100},
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
