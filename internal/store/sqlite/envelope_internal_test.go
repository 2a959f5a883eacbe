package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// execDB runs qs on the store file at path, on a connection of its own.
func execDB(t *testing.T, path string, qs ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range qs {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestAnOutboxOfTheWholeEnvelopeLayoutIsMigrated: a store whose outbox rows hold whole
// envelopes (the layout before compact rows: no at column, version 6) opens with its rows
// served as they were and its version raised to 7 (which a build before compact rows
// refuses); the rows written since hold their envelope's detail alone, far smaller, and
// are served as the whole envelope json.Marshal writes; the prune by time takes the rows
// of both layouts by their time; a compact row changed on disk (its detail, its time, its
// event id) is never served.
func TestAnOutboxOfTheWholeEnvelopeLayoutIsMigrated(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "db")
	s, err := Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	var old []string
	for i := range 3 {
		p := events.NewMessageDelivered(fmt.Sprint("old-", i), "u", 1, t0)
		env, err := events.AppendEnvelope(nil, p, LocalAccount, LocalRegion, t0.Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, env)
		old = append(old, fmt.Sprintf(`INSERT INTO published (event_id, detail_type, envelope, crc) VALUES ('%s', '%s', '%s', %d)`,
			p.ID(), p.DetailType(), env, rowCRC(string(p.DetailType()), env)))
	}
	execDB(t, path, append([]string{`ALTER TABLE published DROP COLUMN at`, `UPDATE meta SET value = '6' WHERE key = 'view_version'`}, old...)...)

	now = t0.Add(3 * time.Hour)
	s, err = Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var version string
	if err := s.r.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'view_version'`).Scan(&version); err != nil || version != "7" {
		t.Fatalf("the store's version %q %v, want 7: a build before compact rows refuses it", version, err)
	}
	var queued []QueuedMessage
	for i := range 4 {
		queued = append(queued, QueuedMessage{MessageID: fmt.Sprint("new-", i), UserID: fmt.Sprint("user-", i), Body: "b", EnqueuedAt: now})
	}
	if err := s.Enqueue(ctx, queued...); err != nil {
		t.Fatal(err)
	}
	pending, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(pending) != 4 {
		t.Fatalf("pending %d %v", len(pending), err)
	}
	var outs []events.Published
	for _, m := range pending {
		outs = append(outs, events.NewMessageDelivered(m.MessageID, m.UserID, 2, now.Add(123*time.Millisecond)))
	}
	for i := range pending {
		if _, err := s.Complete(ctx, pending[i:i+1], outs[i:i+1]); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Hour + 250*time.Millisecond)
	}
	for i, p := range outs {
		env, err := events.NewEnvelope(p, LocalAccount, LocalRegion, t0.Add(time.Duration(3+i)*time.Hour+time.Duration(i)*250*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		want = append(want, b)
	}
	recs, err := s.PublishedSince(ctx, 0, 100)
	if err != nil || len(recs) != len(want) {
		t.Fatalf("outbox: %d rows %v, want %d", len(recs), err, len(want))
	}
	for i, r := range recs {
		if string(r.Envelope) != string(want[i]) {
			t.Fatalf("row %d:\n%s\nwant\n%s", i, r.Envelope, want[i])
		}
	}
	var whole, compactRows, stored, served int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FILTER (WHERE at IS NULL), COUNT(*) FILTER (WHERE at IS NOT NULL),
		SUM(length(envelope)) FILTER (WHERE at IS NOT NULL) FROM published`).Scan(&whole, &compactRows, &stored); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[3:] {
		served += len(r.Envelope)
	}
	if whole != 3 || compactRows != 4 || stored*2 > served {
		t.Fatalf("%d whole and %d compact rows, storing %d bytes of %d served: want 3, 4 and under half", whole, compactRows, stored, served)
	}

	// The prune by time: the old rows at t0, t0+1h, t0+2h, the new ones from t0+3h on.
	if n, err := s.PrunePublished(ctx, t0.Add(90*time.Minute)); err != nil || n != 2 {
		t.Fatalf("pruned %d %v, want the 2 old rows before the cutoff", n, err)
	}
	if n, err := s.PrunePublished(ctx, t0.Add(4*time.Hour+time.Second)); err != nil || n != 3 {
		t.Fatalf("pruned %d %v, want an old row and two new ones", n, err)
	}
	recs, err = s.PublishedSince(ctx, 0, 100)
	if err != nil || len(recs) != 2 || string(recs[0].Envelope) != string(want[5]) {
		t.Fatalf("after the prunes: %d rows %v", len(recs), err)
	}

	for _, damage := range []string{
		`UPDATE published SET envelope = replace(envelope, '"user-2"', '"user-3"') WHERE seq = %d`,
		`UPDATE published SET at = at + 1 WHERE seq = %d`,
		`UPDATE published SET event_id = 'another' WHERE seq = %d`,
	} {
		var env, id string
		var at int64
		seq := recs[0].Seq
		if err := s.r.QueryRowContext(ctx, `SELECT envelope, at, event_id FROM published WHERE seq = ?`, seq).Scan(&env, &at, &id); err != nil {
			t.Fatal(err)
		}
		execDB(t, path, fmt.Sprintf(damage, seq))
		if _, err := s.PublishedSince(ctx, 0, 100); !errors.Is(err, ErrDamaged) {
			t.Fatalf("%s: read %v, want ErrDamaged", damage, err)
		}
		execDB(t, path, fmt.Sprintf(`UPDATE published SET envelope = '%s', at = %d, event_id = '%s' WHERE seq = %d`, env, at, id, seq))
		if _, err := s.PublishedSince(ctx, 0, 100); err != nil {
			t.Fatalf("restored: %v", err)
		}
	}
}
