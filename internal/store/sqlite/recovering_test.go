package sqlite_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestRecentClosesOutliveAKill: the opted-in connections a start takes are those live when
// the previous process stopped (closed as of the start) and those closed within the
// recovery window before it (as of their close), so that a user who went away just before
// a kill still has its messages kept for its reconnect; another start within the window
// finds them again, and past the window they are gone from the table. A store whose
// recovering table predates the close times (the version-4 fixture) migrates.
func TestRecentClosesOutliveAKill(t *testing.T) {
	ctx := context.Background()
	const window = 2 * time.Minute
	for _, tc := range []struct {
		name string
		path func(t *testing.T) string
	}{
		{"new store", func(t *testing.T) string { return filepath.Join(t.TempDir(), "db") }},
		{"store of an earlier layout", func(t *testing.T) string { return copyFixture(t, snapshotV4) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path(t)
			clk := &clock{t: t0.Add(2 * time.Hour)}
			open := func() *sqlite.Store {
				s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now, RecoveryWindow: window})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			mark := func(s *sqlite.Store, conn, user string, on bool) {
				t.Helper()
				if err := s.MarkRecovering(ctx, conn, user, on); err != nil {
					t.Fatal(err)
				}
			}
			take := func(s *sqlite.Store) []sqlite.RecoveringUser {
				t.Helper()
				users, err := s.TakeRecovering(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return users
			}
			s := open()
			start := clk.Now()
			mark(s, "c-old", "olga", true)
			mark(s, "c-old", "olga", false) // closed past the window by the kill
			clk.Add(window - 10*time.Second)
			mark(s, "c-live", "lena", true) // live at the kill
			mark(s, "c-gone-1", "gina", true)
			mark(s, "c-gone-2", "gina", true)
			mark(s, "c-gone-1", "gina", false)
			clk.Add(5 * time.Second)
			closed := clk.Now()
			mark(s, "c-gone-2", "gina", false) // gina's last close, within the window
			clk.Add(10 * time.Second)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s = open()
			restart := clk.Now()
			want := []sqlite.RecoveringUser{{UserID: "gina", ClosedAt: closed}, {UserID: "lena", ClosedAt: restart}}
			if got := take(s); !reflect.DeepEqual(got, want) {
				t.Fatalf("first start took %v, want %v (olga closed at %v, past the window)", got, want, start)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			// A second start within the window (killed again) finds the same users.
			clk.Add(time.Second)
			s = open()
			if got := take(s); !reflect.DeepEqual(got, want) {
				t.Fatalf("second start took %v, want %v", got, want)
			}
			// Past the window after every close, nothing is left.
			clk.Add(window + time.Second)
			if got := take(s); len(got) != 0 {
				t.Fatalf("past the window took %v, want none", got)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			n := countOn(t, path, `SELECT COUNT(*) FROM recovering`)
			if n != 0 {
				t.Fatalf("%d rows left in recovering past the window", n)
			}
		})
	}
}
