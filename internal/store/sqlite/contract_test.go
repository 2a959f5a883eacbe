package sqlite_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
	"github.com/wspresence/wspresence/internal/storetest"
)

const contractGrace = 5 * time.Second

// TestContract runs the store contract against the SQLite store.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		clk := &clock{t: time.Date(2026, 4, 5, 6, 7, 8, 0, time.UTC)}
		var mu sync.Mutex
		var started []presence.Grace
		onFolded := func(p sqlite.Projection) {
			mu.Lock()
			started = append(started, p.Graces...)
			mu.Unlock()
		}
		s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"), sqlite.Options{Grace: contractGrace, Now: clk.Now, OnFolded: onFolded})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		var seen int64
		published := func(t *testing.T) []events.Published {
			recs, err := s.PublishedSince(context.Background(), seen, 1000)
			if err != nil {
				t.Fatal(err)
			}
			var out []events.Published
			for _, r := range recs {
				seen = r.Seq
				out = append(out, decodePublished(t, r))
			}
			return out
		}
		return storetest.Harness{
			Store: s,
			Grace: contractGrace,
			Project: func(t *testing.T) ([]events.Published, []presence.Grace) {
				// Nothing to run: every commit folds what it appends.
				mu.Lock()
				graces := started
				started = nil
				mu.Unlock()
				return published(t), graces
			},
			Published: published,
		}
	})
}

// The SQLite store implements the contract's port with its signatures.
var _ storetest.Store = (*sqlite.Store)(nil)

func decodePublished(t *testing.T, r sqlite.PublishedRecord) events.Published {
	t.Helper()
	var env events.Envelope
	if err := json.Unmarshal(r.Envelope, &env); err != nil {
		t.Fatal(err)
	}
	var p events.Published
	switch env.DetailType {
	case events.DetailUserOnline:
		var e events.UserOnline
		err := json.Unmarshal(env.Detail, &e)
		p = e
		if err != nil {
			t.Fatal(err)
		}
	case events.DetailUserOffline:
		var e events.UserOffline
		err := json.Unmarshal(env.Detail, &e)
		p = e
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unexpected %s", env.DetailType)
	}
	return p
}
