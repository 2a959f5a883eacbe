package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// visitOnce has users ids each open a connection and close it (a third of them with a
// second connection, closed first), at times with nanoseconds, and runs their grace timers
// out: they are offline.
func visitOnce(t *testing.T, s *sqlite.Store, clk *clock, ids []string) {
	t.Helper()
	for i := 0; i < len(ids); i += 500 {
		var evs []events.ConnectionEvent
		for j := i; j < min(i+500, len(ids)); j++ {
			uid, cid := ids[j], fmt.Sprintf("c-%s", ids[j])
			at := t0.Add(time.Duration(j)*time.Millisecond + time.Duration(j*7919%1000003))
			evs = append(evs, events.Opened(uid, cid, at, "", ""))
			if j%3 == 0 { // a second connection, closed before the first: a gap
				evs = append(evs, events.Opened(uid, cid+"b", at, "", ""),
					events.Closed(uid, cid+"b", at.Add(time.Microsecond), events.ReasonClient))
			}
			evs = append(evs, events.Closed(uid, cid, at.Add(time.Duration(1+j%5)*time.Millisecond), events.ReasonClient))
		}
		mustAppend(t, s, evs...)
	}
	expireGraces(t, s, clk, t0.Add(time.Hour))
}

// expireGraces sets the clock to at and runs out every pending grace period.
func expireGraces(tb testing.TB, s *sqlite.Store, clk *clock, at time.Time) {
	tb.Helper()
	clk.Set(at)
	graces, _ := s.PendingGraces(context.Background())
	for _, g := range graces {
		if _, err := s.ExpireGrace(context.Background(), g.UserID, g.Since, clk.Now()); err != nil {
			tb.Fatal(err)
		}
	}
}

func visitorIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%06d", prefix, i*37%n) // not in id order
	}
	return ids
}

// mustPack packs the users offline before cutoff, after a restart (whose snapshot writes
// the rows the image holds: changed since the last snapshot, they are not packed), and
// returns the store reopened.
func mustPack(t *testing.T, s *sqlite.Store, path string, clk *clock, cutoff time.Time, want int64) *sqlite.Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, clk, nil)
	if n, err := s.PackUsers(context.Background(), cutoff); err != nil || n != want {
		t.Fatalf("packed %d users, %v; want %d", n, err, want)
	}
	return s
}

func mustUsers(t *testing.T, s *sqlite.Store, ids []string) []presence.Status {
	t.Helper()
	st, err := s.Users(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func mustDump(t *testing.T, s *sqlite.Store) sqlite.View {
	t.Helper()
	v, err := s.Dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestPackedUsersAreAnsweredAsBefore: users offline past the cutoff leave their hot rows
// for packed blocks; their status and last activity (to the nanosecond), the whole view
// (Dump: offline times and gaps too) and the answers after a restart and after a rebuild
// from the snapshot (the log compacted) and in a backup are those of before the packing.
// Users online or in their grace are not packed; a second pass packs nothing.
func TestPackedUsersAreAnsweredAsBefore(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	defer func() { s.Close() }()
	ids := append(visitorIDs("visitor", 3000), visitorIDs("guest-with-a-longer-id", 200)...)
	visitOnce(t, s, clk, ids)
	at := clk.Now()
	mustAppend(t, s, events.Opened("online", "on1", at, "", ""),
		events.Opened("grace", "g1", at, "", ""), events.Closed("grace", "g1", at, events.ReasonClient))
	asked := append(append([]string{}, ids...), "online", "grace", "never-seen")
	before, view := mustUsers(t, s, asked), mustDump(t, s)

	s = mustPack(t, s, path, clk, at, int64(len(ids)))
	if packed, hot, err := s.PackedUsers(ctx); err != nil || packed != int64(len(ids)) || hot != 2 {
		t.Fatalf("after the packing: %d packed, %d hot rows, %v; want %d and 2", packed, hot, err, len(ids))
	}
	same := func(when string, s *sqlite.Store) {
		t.Helper()
		if after := mustUsers(t, s, asked); !reflect.DeepEqual(after, before) {
			for i := range after {
				if after[i] != before[i] {
					t.Fatalf("%s: %s is answered %+v, was %+v", when, asked[i], after[i], before[i])
				}
			}
			t.Fatalf("%s: the answers differ", when)
		}
		if v := mustDump(t, s); !reflect.DeepEqual(v.Users, view.Users) {
			t.Fatalf("%s: the view's users differ (%d, were %d)", when, len(v.Users), len(view.Users))
		}
	}
	same("packed", s)
	s = mustPack(t, s, path, clk, at, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, clk, nil)
	same("after a restart", s)
	if _, err := s.CompactLog(ctx, clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	p, err := s.Rebuild(ctx)
	if err != nil || p.From == 0 {
		t.Fatalf("rebuild: %+v, %v; want it folded from the snapshot", p, err)
	}
	same("after a rebuild from the snapshot", s)
	backup := filepath.Join(t.TempDir(), "backup")
	if err := sqlite.Backup(ctx, path, backup); err != nil {
		t.Fatal(err)
	}
	if err := sqlite.Check(ctx, backup); err != nil {
		t.Fatalf("the backup's check: %v", err)
	}
	restored := open(t, backup, clk, nil)
	defer restored.Close()
	same("in a backup", restored)
}

// TestAPackedUserReturns: a packed user who connects again is online, then offline with its
// new last activity; its hot row replaces its packed entry (one of the two, never both),
// and it is packed again once offline past the cutoff, with the new activity. Users packed
// in several passes, their ids interleaved, all stay answered.
func TestAPackedUserReturns(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	defer func() { s.Close() }()
	ids := visitorIDs("v", 1000)
	visitOnce(t, s, clk, ids[:500])
	s = mustPack(t, s, path, clk, clk.Now(), 500)
	visitOnce(t, s, clk, ids[500:])
	s = mustPack(t, s, path, clk, clk.Now(), 500)
	first := mustUsers(t, s, ids)

	back := ids[123]
	at := clk.Now().Add(time.Minute + 123456789)
	clk.Set(at)
	mustAppend(t, s, events.Opened(back, "again", at, "", ""))
	if st := mustUsers(t, s, []string{back})[0]; !st.Online() || !st.LastActivity.Equal(at) {
		t.Fatalf("a packed user back: %+v, want online since %s", st, at)
	}
	mustAppend(t, s, events.Closed(back, "again", at.Add(time.Second), events.ReasonClient))
	expireGraces(t, s, clk, at.Add(time.Hour))
	check := func(when string) {
		t.Helper()
		st := mustUsers(t, s, ids)
		for i, u := range st {
			want := first[i]
			if ids[i] == back {
				want = presence.Status{UserID: back, LastActivity: at.Add(time.Second)}
			}
			if u != want {
				t.Fatalf("%s: %s is answered %+v, want %+v", when, ids[i], u, want)
			}
		}
		if v := mustDump(t, s); len(v.Users) != len(ids) {
			t.Fatalf("%s: the view holds %d users, want %d", when, len(v.Users), len(ids))
		}
	}
	check("back and gone")
	if err := s.Close(); err != nil { // the snapshot writes its hot row
		t.Fatal(err)
	}
	s = open(t, path, clk, nil)
	if packed, hot, err := s.PackedUsers(ctx); err != nil || packed != 999 || hot != 1 {
		t.Fatalf("after its return: %d packed, %d hot rows, %v; want 999 and 1", packed, hot, err)
	}
	check("after a restart")
	s = mustPack(t, s, path, clk, clk.Now(), 1)
	check("packed again")
}

// TestUserRetentionForgetsPackedUsers: PruneUsers forgets the packed users whose last
// activity is before the cutoff as it does the hot rows, and keeps the others packed.
func TestUserRetentionForgetsPackedUsers(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	defer func() { s.Close() }()
	ids := visitorIDs("u", 1500)
	visitOnce(t, s, clk, ids)
	s = mustPack(t, s, path, clk, clk.Now(), 1500)
	// visitOnce spaces the users a millisecond apart: the cutoff keeps about the last 500.
	cutoff := t0.Add(1000 * time.Millisecond)
	before := mustUsers(t, s, ids)
	old := 0
	for _, u := range before {
		if u.LastActivity.Before(cutoff) {
			old++
		}
	}
	n, err := s.PruneUsers(ctx, cutoff)
	if err != nil || n != int64(old) || old < 900 || old > 1100 {
		t.Fatalf("pruned %d users, %v; want the %d whose last activity is before the cutoff", n, err, old)
	}
	for i, u := range mustUsers(t, s, ids) {
		want := before[i]
		if want.LastActivity.Before(cutoff) {
			want = presence.Status{UserID: ids[i]} // as a user never seen
		}
		if u != want {
			t.Fatalf("%s after the prune: %+v, want %+v", ids[i], u, want)
		}
	}
	if packed, hot, err := s.PackedUsers(ctx); err != nil || packed != int64(len(ids)-old) || hot != 0 {
		t.Fatalf("after the prune: %d packed, %d hot rows, %v; want %d and 0", packed, hot, err, len(ids)-old)
	}
	if n, err := s.PruneUsers(ctx, cutoff); err != nil || n != 0 {
		t.Fatalf("a second pass pruned %d, %v", n, err)
	}
}

// TestADamagedBlockOfPackedUsersIsDetected: a byte changed in a block of packed users is
// caught by its checksum when a user of it is read: the read fails with ErrDamaged and
// Health reports it, as for a damaged row; the check of a backup (Check) refuses it.
func TestADamagedBlockOfPackedUsersIsDetected(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	ids := visitorIDs("d", 300)
	visitOnce(t, s, clk, ids)
	s = mustPack(t, s, path, clk, clk.Now(), 300)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The last activity of a user in the block's middle, a byte of its varint changed.
	execOn(t, path, `UPDATE view_users_packed SET block = substr(block, 1, length(block)/2) ||
		unhex(printf('%02x', (unicode(substr(CAST(block AS TEXT), length(block)/2 + 1, 1)) + 1) % 128)) ||
		substr(block, length(block)/2 + 2)`)
	if err := sqlite.Check(ctx, path); err == nil {
		t.Fatal("the check of a store with a damaged block passed")
	}
	s = open(t, path, clk, nil)
	defer s.Close()
	if err := s.Health(); err != nil {
		t.Fatalf("before the read: %v", err)
	}
	if _, err := s.Users(ctx, []string{"d-000150"}); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("a user of a damaged block: %v, want ErrDamaged", err)
	}
	if err := s.Health(); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("health after the read: %v, want ErrDamaged", err)
	}
	if _, _, err := s.PackedUsers(ctx); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("a full read of the packed users: %v, want ErrDamaged", err)
	}
}

// TestAPackedUserTakesAThirdOfARow: what the view keeps of 5,000 users who visited once
// and left, packed (the packed blocks, their index, what is left of view_users and its
// index), measured with SQLite's dbstat, is at most 16 bytes a user: a hot row takes
// about 41 (TestAUserRowHoldsLittleMoreThanItsIdAndLastActivity).
func TestAPackedUserTakesAThirdOfARow(t *testing.T) {
	const users = 5000
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path, clk, nil)
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("visitor-%06d", i)
	}
	visitOnce(t, s, clk, ids)
	s = mustPack(t, s, path, clk, clk.Now(), users)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pages, payload int64
	if err := db.QueryRow(`SELECT COALESCE(SUM(pgsize), 0), COALESCE(SUM(payload), 0) FROM dbstat
		WHERE name IN ('view_users', 'view_users_active', 'view_users_packed', 'view_users_packed_last')`).Scan(&pages, &payload); err != nil {
		t.Fatal(err)
	}
	perUser := float64(pages) / users
	var each string
	if err := db.QueryRow(`SELECT group_concat(name || ' ' || n || ' pages', ', ') FROM (SELECT name, COUNT(*) AS n FROM dbstat
		WHERE name IN ('view_users', 'view_users_active', 'view_users_packed', 'view_users_packed_last') GROUP BY name)`).Scan(&each); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d users packed: %d bytes in pages (%d of payload; %s): %.1f bytes per user (%.1f of payload)",
		users, pages, payload, each, perUser, float64(payload)/users)
	if perUser > 16 {
		t.Fatalf("a packed user takes %.1f bytes, want at most 16", perUser)
	}
}

// BenchmarkAppendsBesidePacking measures what packing costs the hot path: the latency of
// single appends (each its own commit, synchronous=NORMAL) alone, then while PackUsers
// packs 100,000 offline users (pruneStep's chunks), and the packing's time.
//
//	go test -run '^$' -bench AppendsBesidePacking -benchtime 1x ./internal/store/sqlite/
func BenchmarkAppendsBesidePacking(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		s := offlineUsers(b, 100_000)
		var packed int64
		var took time.Duration
		alone, beside := appendsBeside(b, s, func() {
			start := time.Now()
			n, err := s.PackUsers(ctx, t0.Add(time.Hour))
			if err != nil {
				b.Error(err)
			}
			packed, took = n, time.Since(start)
		})
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(pct(alone, 0.99), "p99-ms-alone")
		b.ReportMetric(pct(alone, 1), "max-ms-alone")
		b.ReportMetric(pct(beside, 0.99), "p99-ms-beside")
		b.ReportMetric(pct(beside, 1), "max-ms-beside")
		b.ReportMetric(float64(packed), "users-packed")
		b.ReportMetric(took.Seconds()*10_000/float64(max(packed, 1)), "s-per-10k-users")
		b.ReportMetric(float64(len(beside)), "appends-beside")
	}
}

// BenchmarkUsersOutsideTheImage: GET /user/online?userIds= for 100 users offline since
// before the last restart, read from the store (not the memory image): hot rows, then the
// same users packed. One operation is one Users call of 100 ids.
func BenchmarkUsersOutsideTheImage(b *testing.B) {
	ctx := context.Background()
	const users = 10_000
	s := offlineUsers(b, users)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%07d", i*7919%users)
	}
	run := func(b *testing.B) {
		for b.Loop() {
			st, err := s.Users(ctx, ids)
			if err != nil || st[0].LastActivity.IsZero() {
				b.Fatalf("%+v, %v", st[0], err)
			}
		}
	}
	b.Run("rows", run)
	if n, err := s.PackUsers(ctx, t0.Add(time.Hour)); err != nil || n != users {
		b.Fatalf("packed %d, %v", n, err)
	}
	b.Run("packed", run)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// offlineUsers opens a store in a new folder where users (ids user-0000000 on, not written
// in id order) each opened a connection and closed it, their grace periods run out, and
// returns it reopened: the restart's snapshot wrote their rows, and the image holds no one.
func offlineUsers(b *testing.B, users int) *sqlite.Store {
	b.Helper()
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "db")
	clk := &clock{t: t0}
	opts := sqlite.Options{Grace: time.Second, Now: clk.Now, Sync: "normal"}
	s, err := sqlite.Open(ctx, path, opts)
	if err != nil {
		b.Fatal(err)
	}
	const perAppend = 500
	for i := 0; i < users; i += perAppend {
		evs := make([]events.ConnectionEvent, 0, 2*perAppend)
		for j := i; j < min(i+perAppend, users); j++ {
			uid, cid, at := fmt.Sprintf("user-%07d", j*7919%users), fmt.Sprintf("conn-%07d", j), t0.Add(time.Duration(j)*time.Millisecond)
			evs = append(evs, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Millisecond/2), events.ReasonClient))
		}
		if _, err := s.Append(ctx, evs...); err != nil {
			b.Fatal(err)
		}
	}
	expireGraces(b, s, clk, t0.Add(time.Hour))
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if s, err = sqlite.Open(ctx, path, opts); err != nil {
		b.Fatal(err)
	}
	return s
}
