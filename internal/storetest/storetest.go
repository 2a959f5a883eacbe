// Package storetest is the contract every event store and view adapter passes: the SQLite
// store of the local runtime and the DynamoDB store of the AWS runtime implement Store with
// the same signatures (each asserts it at compile time) and run the same cases through
// Run. The suite drives the adapter through a Harness that says how to fold what was
// appended (the projector) and how to read what the adapter's outbox published.
package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// Store is the port under contract: the append-only log, the view's reads, and the two
// decisions a timer or a schedule triggers.
//
// Append writes events idempotently by natural key and returns how many were new.
// LiveConnections lists a user's live connections; Users answers every id in order (a user
// never seen is offline with zero LastActivity); OnlineUsers lists users with a live
// connection in id order after the id after, at most limit. ExpireGrace runs the timer of
// userID's grace period that began at since, at now (presence.ExpireGracePeriod), records
// what it decides with the new state in one durable write, and returns it; a second run
// decides nothing. PruneTombstones forgets connections closed before cutoff and returns
// how many.
type Store interface {
	Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error)
	LiveConnections(ctx context.Context, userID string) ([]string, error)
	Users(ctx context.Context, ids []string) ([]presence.Status, error)
	OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error)
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	PruneTombstones(ctx context.Context, cutoff time.Time) (int, error)
}

// Harness is one adapter wired for the suite.
type Harness struct {
	Store Store
	// Grace is the grace period the store was opened with.
	Grace time.Duration
	// Project folds every event appended so far into the view and returns the events
	// published (through the adapter's outbox) and the grace periods started.
	Project func(t *testing.T) ([]events.Published, []presence.Grace)
	// Published returns the events the adapter's outbox published since the last call.
	Published func(t *testing.T) []events.Published
}

// expire runs the grace timer of userID's period since at its deadline and returns what
// the outbox published, checking it is what ExpireGrace returned.
func expire(t *testing.T, h Harness, userID string, since time.Time) []events.Published {
	t.Helper()
	eff, err := h.Store.ExpireGrace(context.Background(), userID, since, since.Add(h.Grace))
	if err != nil {
		t.Fatalf("ExpireGrace: %v", err)
	}
	pub := h.Published(t)
	if !reflect.DeepEqual(ids(pub), ids(eff.Publish)) {
		t.Fatalf("ExpireGrace returned %v, the outbox published %v", kinds(eff.Publish), kinds(pub))
	}
	return pub
}

func ids(ps []events.Published) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.ID())
	}
	return out
}

var t0 = time.Date(2026, 4, 5, 6, 7, 8, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// Run runs the contract against fresh harnesses from newHarness (one per case, each on
// empty tables).
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	cases := map[string]func(t *testing.T, h Harness){
		"AppendIsIdempotent":              appendIsIdempotent,
		"PresenceAndTransitions":          presenceAndTransitions,
		"ReconnectInsideGraceIsSilent":    reconnectInsideGrace,
		"CloseWinsOverOpenInAnyOrder":     closeWins,
		"LateCloseOfOldConnection":        lateClose,
		"UsersAnswersEveryID":             usersAnswersEveryID,
		"OnlineUsersPagesInIDOrder":       onlineUsersPages,
		"StaleGraceTimerPublishesNothing": staleGrace,
		"PruneForgetsOnlyOldTombstones":   pruneTombstones,
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { c(t, newHarness(t)) })
	}
}

func mustAppend(t *testing.T, h Harness, evs ...events.ConnectionEvent) int {
	t.Helper()
	n, err := h.Store.Append(context.Background(), evs...)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	return n
}

func kinds(ps []events.Published) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s:%s", p.DetailType(), userOf(p)))
	}
	return out
}

func userOf(p events.Published) string {
	var d struct {
		UserID string `json:"userId"`
	}
	if b, err := json.Marshal(p); err != nil || json.Unmarshal(b, &d) != nil || d.UserID == "" {
		return "?"
	}
	return d.UserID
}

func expectKinds(t *testing.T, what string, got []events.Published, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if g := kinds(got); !reflect.DeepEqual(g, want) {
		t.Fatalf("%s published %v, want %v", what, g, want)
	}
}

func status(t *testing.T, h Harness, id string) presence.Status {
	t.Helper()
	u, err := h.Store.Users(context.Background(), []string{id})
	if err != nil || len(u) != 1 {
		t.Fatalf("Users(%s) = %v, %v", id, u, err)
	}
	return u[0]
}

func appendIsIdempotent(t *testing.T, h Harness) {
	o := events.Opened("u", "c1", at(0), "10.0.0.1", "ua")
	if n := mustAppend(t, h, o, o); n != 1 {
		t.Fatalf("appended %d of a duplicated open, want 1", n)
	}
	if n := mustAppend(t, h, o, events.Closed("u", "c1", at(1), events.ReasonClient), events.Closed("u", "c1", at(2), events.ReasonGone)); n != 1 {
		t.Fatalf("appended %d, want only the first close", n)
	}
	if _, err := h.Store.Append(context.Background(), events.ConnectionEvent{Type: "Nope"}); err == nil {
		t.Fatal("an invalid event was appended")
	}
}

func presenceAndTransitions(t *testing.T, h Harness) {
	ctx := context.Background()
	mustAppend(t, h, events.Opened("a", "a1", at(0), "", ""), events.Opened("a", "a2", at(1), "", ""), events.Opened("b", "b1", at(2), "", ""))
	pub, graces := h.Project(t)
	if len(pub) != 2 || len(graces) != 0 {
		t.Fatalf("opens published %v, started %v", kinds(pub), graces)
	}
	if a := status(t, h, "a"); a.Connections != 2 || !a.LastActivity.Equal(at(1)) {
		t.Fatalf("a = %+v", a)
	}
	live, err := h.Store.LiveConnections(ctx, "a")
	if err != nil || len(live) != 2 {
		t.Fatalf("live connections of a = %v, %v", live, err)
	}
	mustAppend(t, h, events.Closed("a", "a1", at(3), events.ReasonClient))
	pub, graces = h.Project(t)
	expectKinds(t, "closing one of two", pub)
	if len(graces) != 0 || !status(t, h, "a").Online() {
		t.Fatalf("a offline with a connection left (graces %v)", graces)
	}
	mustAppend(t, h, events.Closed("a", "a2", at(4), events.ReasonGone))
	pub, graces = h.Project(t)
	expectKinds(t, "closing the last", pub)
	if len(graces) != 1 || graces[0].UserID != "a" || !graces[0].Since.Equal(at(4)) {
		t.Fatalf("graces %v, want a since %v", graces, at(4))
	}
	if a := status(t, h, "a"); a.Online() || !a.LastActivity.Equal(at(4)) {
		t.Fatalf("a after the last close = %+v", a)
	}
	if eff, err := h.Store.ExpireGrace(ctx, "a", at(4), at(4).Add(h.Grace-time.Millisecond)); err != nil || len(eff.Publish) != 0 {
		t.Fatalf("the grace timer decided before its deadline: %v, %v", kinds(eff.Publish), err)
	}
	off := expire(t, h, "a", at(4))
	expectKinds(t, "the grace timer", off, "UserOffline:a")
	// A timer that runs twice announces nothing new.
	expectKinds(t, "the grace timer run twice", expire(t, h, "a", at(4)))
	// Redelivered log entries change nothing and publish nothing new.
	mustAppend(t, h, events.Opened("a", "a1", at(0), "", ""))
	pub, _ = h.Project(t)
	expectKinds(t, "a redelivered open", pub)
	if status(t, h, "a").Online() {
		t.Fatal("a redelivered open of a closed connection made a online")
	}
}

func reconnectInsideGrace(t *testing.T, h Harness) {
	mustAppend(t, h, events.Opened("r", "r1", at(0), "", ""))
	h.Project(t)
	mustAppend(t, h, events.Closed("r", "r1", at(1), events.ReasonClient))
	_, graces := h.Project(t)
	if len(graces) != 1 {
		t.Fatalf("graces %v", graces)
	}
	mustAppend(t, h, events.Opened("r", "r2", at(2), "", ""))
	pub, _ := h.Project(t)
	expectKinds(t, "a reconnect inside the grace period", pub)
	expectKinds(t, "the grace timer after a reconnect", expire(t, h, "r", at(1)))
	if !status(t, h, "r").Online() {
		t.Fatal("r offline after reconnecting")
	}
}

func closeWins(t *testing.T, h Harness) {
	mustAppend(t, h, events.Closed("w", "w1", at(5), events.ReasonClient))
	h.Project(t)
	mustAppend(t, h, events.Opened("w", "w1", at(0), "", ""))
	pub, graces := h.Project(t)
	expectKinds(t, "an open after its close", pub)
	if len(graces) != 0 || status(t, h, "w").Online() {
		t.Fatal("a connection whose close came first is live")
	}
	if live, _ := h.Store.LiveConnections(context.Background(), "w"); len(live) != 0 {
		t.Fatalf("live connections %v", live)
	}
}

func lateClose(t *testing.T, h Harness) {
	mustAppend(t, h, events.Opened("l", "old", at(0), "", ""), events.Opened("l", "new", at(10), "", ""))
	h.Project(t)
	mustAppend(t, h, events.Closed("l", "old", at(11), events.ReasonSwept))
	pub, graces := h.Project(t)
	expectKinds(t, "a late close of an old connection", pub)
	if len(graces) != 0 || status(t, h, "l").Connections != 1 {
		t.Fatalf("late close: graces %v, status %+v", graces, status(t, h, "l"))
	}
}

func usersAnswersEveryID(t *testing.T, h Harness) {
	mustAppend(t, h, events.Opened("x", "x1", at(0), "", ""))
	h.Project(t)
	ids := []string{"nobody", "x", "nobody"}
	for i := range 150 {
		ids = append(ids, fmt.Sprintf("ghost-%d", i))
	}
	got, err := h.Store.Users(context.Background(), ids)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("Users = %d answers, %v", len(got), err)
	}
	if got[0].UserID != "nobody" || got[0].Online() || !got[0].LastActivity.IsZero() || got[2].UserID != "nobody" {
		t.Fatalf("unknown user answered %+v", got[0])
	}
	if got[1].UserID != "x" || got[1].Connections != 1 || !got[1].LastActivity.Equal(at(0)) {
		t.Fatalf("x answered %+v", got[1])
	}
	if got[len(got)-1].UserID != "ghost-149" {
		t.Fatalf("order lost: last is %+v", got[len(got)-1])
	}
}

func onlineUsersPages(t *testing.T, h Harness) {
	want := []string{"p0", "p1", "p2", "p3", "p4"}
	for i, u := range want {
		mustAppend(t, h, events.Opened(u, "c-"+u, at(i), "", ""))
	}
	mustAppend(t, h, events.Opened("gone", "c-gone", at(0), "", ""), events.Closed("gone", "c-gone", at(1), events.ReasonClient))
	h.Project(t)
	var got []string
	after := ""
	for {
		page, err := h.Store.OnlineUsers(context.Background(), after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page {
			if !u.Online() {
				t.Fatalf("offline user listed: %+v", u)
			}
			got = append(got, u.UserID)
		}
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].UserID
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("online users %v, want %v", got, want)
	}
}

func staleGrace(t *testing.T, h Harness) {
	mustAppend(t, h, events.Opened("g", "g1", at(0), "", ""), events.Closed("g", "g1", at(1), events.ReasonClient))
	h.Project(t)
	mustAppend(t, h, events.Opened("g", "g2", at(2), "", ""), events.Closed("g", "g2", at(3), events.ReasonClient))
	h.Project(t)
	// The timer of the first offline period fires: a later period began, so nothing.
	expectKinds(t, "the first period's timer", expire(t, h, "g", at(1)))
	expectKinds(t, "the second period's timer", expire(t, h, "g", at(3)), "UserOffline:g")
}

func pruneTombstones(t *testing.T, h Harness) {
	ctx := context.Background()
	mustAppend(t, h, events.Opened("p", "old", at(0), "", ""), events.Closed("p", "old", at(1), events.ReasonClient),
		events.Opened("p", "recent", at(2), "", ""), events.Closed("p", "recent", at(10), events.ReasonClient),
		events.Opened("p", "live", at(3), "", ""))
	h.Project(t)
	n, err := h.Store.PruneTombstones(ctx, at(5))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want the one closed before the cutoff", n, err)
	}
	if n, err := h.Store.PruneTombstones(ctx, at(5)); err != nil || n != 0 {
		t.Fatalf("pruned again %d, %v", n, err)
	}
	if p := status(t, h, "p"); p.Connections != 1 || !p.LastActivity.Equal(at(10)) {
		t.Fatalf("p after pruning = %+v", p)
	}
	// The recent tombstone still wins over a redelivered open.
	mustAppend(t, h, events.Opened("p", "recent", at(2), "", ""))
	h.Project(t)
	if live, _ := h.Store.LiveConnections(ctx, "p"); !reflect.DeepEqual(live, []string{"live"}) {
		t.Fatalf("live connections %v after pruning", live)
	}
}
