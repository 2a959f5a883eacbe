package onlineapi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/presence"
)

// Limits of the query.
const (
	// DefaultLimit is the page size of a continuation (nextToken) given without limit.
	DefaultLimit = 100
	MaxLimit     = 1000
	// MaxUnpagedUsers bounds the reply of a list request without limit (which answers every
	// online user, as the original service did): past it the request is refused with
	// too_many_results rather than cut off silently. 50,000 users keep the reply under the
	// 6 MB a Lambda function may answer.
	MaxUnpagedUsers = 50000
	MaxUserIDs      = 100
	// MaxQueryBytes bounds the raw query string.
	MaxQueryBytes = 64 * 1024
)

// NextTokenHeader carries the token of the next page.
const NextTokenHeader = "X-Next-Token"

// Query is a parsed GET /user/online request: either UserIDs (status of each) or the online
// list: every online user when Limit is 0 (no limit and no nextToken given), else a page of
// Limit users after After.
type Query struct {
	UserIDs []string
	Limit   int
	After   string
}

// ByIDs reports whether the query asks for given users rather than the online list.
func (q Query) ByIDs() bool { return q.UserIDs != nil }

// Parse validates the query string of GET /user/online. Every error is a 400 *httperr.Error.
// userIds may be comma-separated, repeated, or both; white space around an id is ignored
// and duplicates are answered once. A user id holds no comma and no surrounding white space
// (events.ValidateUserID), so every id that can connect can be asked for this way.
func Parse(rawQuery string) (Query, error) {
	if len(rawQuery) > MaxQueryBytes {
		return Query{}, httperr.BadRequest(httperr.CodeInvalidRequest, fmt.Sprintf("query string longer than %d bytes", MaxQueryBytes))
	}
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return Query{}, httperr.BadRequest(httperr.CodeInvalidRequest, "malformed query string")
	}
	return FromValues(values)
}

// FromValues validates already-decoded query parameters (as API Gateway delivers them).
func FromValues(values url.Values) (Query, error) {
	var q Query
	if _, ok := values["nextToken"]; ok {
		q.Limit = DefaultLimit
	}
	if raw, ok := values["limit"]; ok {
		n, err := strconv.Atoi(last(raw))
		if err != nil || n < 1 || n > MaxLimit {
			return Query{}, httperr.BadRequest(httperr.CodeInvalidLimit, fmt.Sprintf("limit must be an integer from 1 to %d", MaxLimit))
		}
		q.Limit = n
	}
	if raw, ok := values["nextToken"]; ok {
		after, err := DecodeToken(last(raw))
		if err != nil {
			return Query{}, httperr.BadRequest(httperr.CodeInvalidToken, "nextToken is not a token this API returned")
		}
		q.After = after
	}
	if raw, ok := values["userIds"]; ok {
		seen := map[string]bool{}
		q.UserIDs = []string{}
		for _, v := range raw {
			for _, id := range strings.Split(v, ",") {
				id = strings.TrimSpace(id)
				if err := events.ValidateUserID(id); err != nil {
					code := httperr.CodeInvalidUserIDs
					if errors.Is(err, events.ErrInvalidUTF8) {
						code = httperr.CodeInvalidUTF8
					}
					return Query{}, httperr.BadRequest(code, "userIds: "+err.Error())
				}
				if !seen[id] {
					seen[id] = true
					q.UserIDs = append(q.UserIDs, id)
				}
				if len(q.UserIDs) > MaxUserIDs {
					return Query{}, httperr.BadRequest(httperr.CodeTooManyUserIDs, fmt.Sprintf("at most %d userIds per request", MaxUserIDs))
				}
			}
		}
	}
	return q, nil
}

func last(vs []string) string { return vs[len(vs)-1] }

const tokenPrefix = "v1."

// EncodeToken returns the opaque token of the page that starts after userID.
func EncodeToken(userID string) string {
	return tokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(userID))
}

// DecodeToken returns the user id a token from EncodeToken starts after.
func DecodeToken(tok string) (string, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return "", fmt.Errorf("unknown token version")
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", fmt.Errorf("decode token: %w", err)
	}
	if err := events.ValidateUserID(string(b)); err != nil {
		return "", fmt.Errorf("decode token: %w", err)
	}
	return string(b), nil
}

// Status is one element of the reply, with the original service's field names.
// LastActivity is never null, so a typed client of the original (a non-nullable DateTime)
// reads every reply: a user never seen has 0001-01-01T00:00:00Z (DateTime.MinValue in .NET,
// the zero time.Time in Go).
type Status struct {
	UserID       string    `json:"UserId"`
	IsOnline     bool      `json:"IsOnline"`
	LastActivity time.Time `json:"LastActivity"`
	Connections  int       `json:"Connections"`
}

// NewStatus builds a reply element.
func NewStatus(userID string, connections int, lastActivity time.Time) Status {
	return Status{UserID: userID, IsOnline: connections > 0, Connections: connections, LastActivity: lastActivity.UTC()}
}

// UserStatus is the reply of GET /user/{userId}/online, the original service's shape.
type UserStatus struct {
	Status string `json:"status"` // "online" or "offline"
}

// ParseUserID validates the {userId} of GET /user/{userId}/online (a 400 *httperr.Error).
func ParseUserID(id string) (string, error) {
	if err := events.ValidateUserID(id); err != nil {
		code := httperr.CodeInvalidUserIDs
		if errors.Is(err, events.ErrInvalidUTF8) {
			code = httperr.CodeInvalidUTF8
		}
		return "", httperr.BadRequest(code, "userId: "+err.Error())
	}
	return id, nil
}

// AnswerUser answers GET /user/{userId}/online for a valid id.
func AnswerUser(ctx context.Context, v View, id string) (UserStatus, error) {
	users, err := v.Users(ctx, []string{id})
	if err != nil {
		return UserStatus{}, fmt.Errorf("read view: %w", err)
	}
	if len(users) == 1 && users[0].Connections > 0 {
		return UserStatus{Status: "online"}, nil
	}
	return UserStatus{Status: "offline"}, nil
}

// Page builds the reply of a list query from up to Limit+1 users read after q.After: it
// keeps Limit of them and returns the next page's token ("" on the last page).
func Page(q Query, users []Status) ([]Status, string) {
	if len(users) <= q.Limit {
		return users, ""
	}
	users = users[:q.Limit]
	return users, EncodeToken(users[len(users)-1].UserID)
}

// MethodAllowed reports whether method may be used on /user/online.
func MethodAllowed(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// View is what the endpoint reads. Users answers every id given, in order (a user never
// seen is offline with no last activity); OnlineUsers lists users with a live connection
// in id order after the id after. Both must be safe for concurrent use.
type View interface {
	Users(ctx context.Context, ids []string) ([]presence.Status, error)
	OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error)
}

// ErrTooManyResults refuses a list request without limit when more than MaxUnpagedUsers
// are online.
var ErrTooManyResults = httperr.New(http.StatusRequestEntityTooLarge, httperr.CodeTooManyResults,
	fmt.Sprintf("more than %d users are online: page through them with limit and nextToken", MaxUnpagedUsers))

// Answer runs q against v and returns the reply and the next page's token ("" if none).
func Answer(ctx context.Context, v View, q Query) ([]Status, string, error) {
	var (
		users []presence.Status
		err   error
	)
	switch {
	case q.ByIDs():
		users, err = v.Users(ctx, q.UserIDs)
	case q.Limit == 0:
		users, err = allOnline(ctx, v)
	default:
		users, err = v.OnlineUsers(ctx, q.After, q.Limit+1)
	}
	if errors.Is(err, ErrTooManyResults) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", fmt.Errorf("read view: %w", err)
	}
	out := make([]Status, len(users))
	for i, u := range users {
		out[i] = NewStatus(u.UserID, u.Connections, u.LastActivity)
	}
	if q.ByIDs() || q.Limit == 0 {
		return out, "", nil
	}
	out, next := Page(q, out)
	return out, next, nil
}

// allOnline reads every online user, page by page, refusing past MaxUnpagedUsers.
func allOnline(ctx context.Context, v View) ([]presence.Status, error) {
	var all []presence.Status
	after := ""
	for {
		page, err := v.OnlineUsers(ctx, after, MaxLimit)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(all) > MaxUnpagedUsers {
			return nil, ErrTooManyResults
		}
		if len(page) < MaxLimit {
			return all, nil
		}
		after = page[len(page)-1].UserID
	}
}
