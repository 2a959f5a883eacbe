package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// snapshotV4 is a store written by the version whose snapshot was of version 4 (announced
// as text, offline_since): users u0..u19 each opened and closed a connection at t0+i s and
// were announced offline at t0+1h, "stays" is online since t0+1m, "grace" left at
// t0+61s and is in its grace period (5s, its timer not run); the log was then compacted
// (it is kept from position 44: the records of u0..u19's visits are gone).
const snapshotV4 = "testdata/snapshot-v4-compacted.db"

func copyFixture(t *testing.T, from string) string {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(t.TempDir(), "db")
	dst, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// countOn returns the count query q answers on the store file at path, read by a
// connection of its own.
func countOn(t *testing.T, path, q string) int {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// execOn runs qs on the store file at path, on a connection of its own.
var execOn = sqlite.ExecDB

// TestASnapshotOfThePreviousVersionIsMigratedInPlace: a store whose snapshot is of the
// previous version, its log compacted, is migrated in place when opened: a user whose
// log records are gone still answers its last activity, the online user and the one in
// its grace period are in the memory image (the grace timer to run again), the rows are in
// the new shape, and a row damaged before the migration is still caught by its checksum.
func TestASnapshotOfThePreviousVersionIsMigratedInPlace(t *testing.T) {
	path := copyFixture(t, snapshotV4)
	execOn(t, path, `UPDATE view_users SET crc = crc + 1 WHERE user_id = 'u5'`)
	ctx := context.Background()
	clk := &clock{t: t0.Add(time.Hour)}
	for start := 1; start <= 2; start++ {
		s := open(t, path, clk, nil)
		st, err := s.Users(ctx, []string{"u3", "u17", "stays", "grace", "never"})
		if err != nil {
			t.Fatal(err)
		}
		want := []presence.Status{
			{UserID: "u3", LastActivity: t0.Add(3*time.Second + time.Millisecond)},
			{UserID: "u17", LastActivity: t0.Add(17*time.Second + time.Millisecond)},
			{UserID: "stays", Connections: 1, LastActivity: t0.Add(time.Minute)},
			{UserID: "grace", LastActivity: t0.Add(61 * time.Second)},
			{UserID: "never"},
		}
		for i := range want {
			if st[i].UserID != want[i].UserID || st[i].Connections != want[i].Connections || !st[i].LastActivity.Equal(want[i].LastActivity) {
				t.Fatalf("start %d: %s is %+v, want %+v", start, want[i].UserID, st[i], want[i])
			}
		}
		if g, _ := s.PendingGraces(ctx); len(g) != 1 || g[0].UserID != "grace" || !g[0].Since.Equal(t0.Add(61*time.Second)) {
			t.Fatalf("start %d: grace periods to run %+v, want grace's since t0+61s", start, g)
		}
		if n := s.ImageUsers(); n != 2 {
			t.Fatalf("start %d: the image holds %d users, want the online one and the one in its grace period", start, n)
		}
		if _, err := s.Users(ctx, []string{"u5"}); !errors.Is(err, sqlite.ErrDamaged) {
			t.Fatalf("start %d: u5's row damaged before the migration read as %v, want ErrDamaged", start, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version string
	var textRows int
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'view_version'`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT COUNT(*) FROM view_users WHERE typeof(announced) <> 'integer'`).Scan(&textRows); err != nil {
		t.Fatal(err)
	}
	var packedTable int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'view_users_packed'`).Scan(&packedTable); err != nil {
		t.Fatal(err)
	}
	if version != "7" || textRows != 0 || packedTable != 1 {
		t.Fatalf("after the migration: version %q, %d rows with a text announced state, packed users' table %d", version, textRows, packedTable)
	}
}

// TestASnapshotThisBuildCannotReadIsRefused: a snapshot of a newer version, of an unknown
// one, or of one too old to migrate once the log is compacted is refused when opened
// (ErrSnapshotVersion), the file left as it was.
func TestASnapshotThisBuildCannotReadIsRefused(t *testing.T) {
	for _, version := range []string{"8", "new", "3"} {
		t.Run(version, func(t *testing.T) {
			path := copyFixture(t, snapshotV4)
			execOn(t, path, fmt.Sprintf(`UPDATE meta SET value = '%s' WHERE key = 'view_version'`, version))
			clk := &clock{t: t0.Add(time.Hour)}
			s, err := sqlite.Open(context.Background(), path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now})
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, sqlite.ErrSnapshotVersion) {
				t.Fatalf("open: %v, want ErrSnapshotVersion", err)
			}
			t.Log(err)
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var users int
			if err := db.QueryRow(`SELECT COUNT(*) FROM view_users WHERE announced = 'offline'`).Scan(&users); err != nil || users != 20 {
				t.Fatalf("the refused store's user rows: %d, %v; want its 20 offline users as they were", users, err)
			}
		})
	}
}
