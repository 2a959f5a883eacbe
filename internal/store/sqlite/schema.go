package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// viewVersion changes whenever the snapshot tables change shape: a store whose snapshot
// has another version (or none) drops it and folds the whole log again when opened.
const viewVersion = "4"

// logSchema is what is durable on the hot path: the log (one row per connection event or
// grace decision, no secondary index), the queue (one row per accepted message), and the
// outbox (one row per published event, written in the commit of what decided it, so it
// needs no index to be published once).
const logSchema = `
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
	seq  INTEGER PRIMARY KEY,
	type TEXT NOT NULL,
	data TEXT NOT NULL,
	crc  INTEGER
);
CREATE TABLE IF NOT EXISTS published (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	event_id    TEXT    NOT NULL,
	detail_type TEXT    NOT NULL,
	envelope    TEXT    NOT NULL,
	crc         INTEGER
);
CREATE TABLE IF NOT EXISTS cursors (
	name TEXT PRIMARY KEY,
	seq  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id  TEXT    NOT NULL,
	user_id     TEXT    NOT NULL,
	body        TEXT    NOT NULL,
	enqueued_at INTEGER NOT NULL,
	done_at     INTEGER,
	UNIQUE (message_id, user_id)
);
-- crc is added by migrate (messageCRC).
-- stream_offset and stream_gen are added by migrate (streamColumns).
CREATE TABLE IF NOT EXISTS recovering (
	connection_id TEXT PRIMARY KEY,
	user_id       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_pending ON messages (seq) WHERE done_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
`

// snapshotSchema holds the view's last snapshot: its rows as of the checkpoint, the log
// position it folded up to. A start reads the rows of the active users and the live
// connections (the memory image); the fold and the reads read the others on demand. A
// user's row stays (its last activity answers GET /user/online); what removes a
// connection's row is the tombstone retention (PruneTombstones, by view_connections_closed).
const snapshotSchema = `
CREATE TABLE IF NOT EXISTS checkpoints (
	name TEXT PRIMARY KEY,
	seq  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_users (
	user_id       TEXT    PRIMARY KEY,
	live          INTEGER NOT NULL,
	last_activity INTEGER,
	announced     TEXT    NOT NULL,
	offline_since INTEGER,
	crc           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_connections (
	connection_id TEXT PRIMARY KEY,
	user_id       TEXT NOT NULL,
	opened_at     INTEGER,
	closed_at     INTEGER,
	reason        TEXT,
	last_seen     INTEGER,
	crc           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS view_users_active ON view_users (user_id) WHERE live > 0 OR announced = 'online';
CREATE INDEX IF NOT EXISTS view_connections_closed ON view_connections (closed_at);
`

const dropSnapshot = `
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS view_users;
DROP TABLE IF EXISTS view_connections;
`

// legacyLog moves the log of a store written by an earlier version (the events table,
// with its key index and columns) into the log table, in order.
const legacyLog = `
INSERT INTO log (seq, type, data) SELECT seq, type, data FROM events ORDER BY seq;
DROP TABLE events;
`

// streamColumns give a queue row its position in its user's stream (stream.go); the index
// holds only the rows that keep one (PruneStreams clears them past the recovery window).
var streamColumns = []string{
	`ALTER TABLE messages ADD COLUMN stream_offset INTEGER`,
	`ALTER TABLE messages ADD COLUMN stream_gen INTEGER`,
}

const streamIndex = `CREATE INDEX IF NOT EXISTS messages_stream ON messages (user_id, stream_offset) WHERE stream_offset IS NOT NULL`

func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, logSchema); err != nil {
		return fmt.Errorf("create log tables: %w", err)
	}
	var streams int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'stream_offset'`).Scan(&streams); err != nil {
		return fmt.Errorf("look for stream positions: %w", err)
	}
	if streams == 0 {
		for _, q := range streamColumns {
			if _, err := db.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("add stream positions: %w", err)
			}
		}
	}
	if _, err := db.ExecContext(ctx, streamIndex); err != nil {
		return fmt.Errorf("index stream positions: %w", err)
	}
	// Rows of the log, the outbox and the queue carry a checksum (rowCRC, messageCRC);
	// rows written before it have none (NULL) and are read unchecked.
	for _, table := range []string{"log", "published", "messages"} {
		var has int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = 'crc'`, table).Scan(&has); err != nil {
			return fmt.Errorf("look for the %s checksums: %w", table, err)
		}
		if has == 0 {
			if _, err := db.ExecContext(ctx, `ALTER TABLE `+table+` ADD COLUMN crc INTEGER`); err != nil {
				return fmt.Errorf("add the %s checksums: %w", table, err)
			}
		}
	}
	var legacy int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'`).Scan(&legacy); err != nil {
		return fmt.Errorf("look for an earlier log: %w", err)
	}
	var version string
	err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'view_version'`).Scan(&version)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read view version: %w", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if legacy > 0 {
		if _, err := tx.ExecContext(ctx, legacyLog); err != nil {
			return fmt.Errorf("move the earlier log: %w", err)
		}
	}
	if version != viewVersion {
		if _, err := tx.ExecContext(ctx, dropSnapshot); err != nil {
			return fmt.Errorf("drop old snapshot: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, snapshotSchema); err != nil {
		return fmt.Errorf("create snapshot tables: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('view_version', ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, viewVersion); err != nil {
		return fmt.Errorf("write view version: %w", err)
	}
	return tx.Commit()
}
