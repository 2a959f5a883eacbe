package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
)

// Epoch returns the store's epoch: a random id written with the store (meta key epoch) and
// replaced when the store's history is not the one positions were handed out from (a
// restore, an accepted loss: RenewEpoch). Positions (the outbox's event ids, the streams'
// offsets) name something only within one epoch.
func (s *Store) Epoch() string { return *s.epoch.Load() }

// RenewEpoch replaces the store's epoch (a restored store, or one whose lost tail was
// accepted: positions handed out before can no longer be trusted).
func (s *Store) RenewEpoch(ctx context.Context) error {
	id := newEpoch()
	err := s.writeExec(ctx, func(ctx context.Context) error {
		_, err := s.wc.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('epoch', ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("renew the store's epoch: %w", err)
	}
	s.epoch.Store(&id)
	return nil
}

func newEpoch() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ensureEpoch reads the store's epoch, writing a new one if it has none.
func ensureEpoch(ctx context.Context, db *sql.DB) (string, error) {
	var id string
	switch err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'epoch'`).Scan(&id); {
	case err == nil:
		return id, nil
	case !errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("read the store's epoch: %w", err)
	}
	id = newEpoch()
	if _, err := db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('epoch', ?)`, id); err != nil {
		return "", fmt.Errorf("record the store's epoch: %w", err)
	}
	return id, nil
}
