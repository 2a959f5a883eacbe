package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// viewVersion is the shape of the snapshot tables. A store whose snapshot has an earlier
// version is migrated in place when opened, a step per version (snapshotSteps), each in
// one transaction: once the log is compacted, the snapshot is the only record of the users
// the log no longer holds, so it is never dropped. A version with no step (written before
// the log was compacted) is folded again from the log when the log is whole; a newer or
// unknown version is refused (ErrSnapshotVersion).
const viewVersion = 7

// firstStep is the oldest version snapshotSteps migrates.
const firstStep = 4

// snapshotSteps migrates a snapshot of version v (the key) to v+1 inside tx.
var snapshotSteps = map[int]func(ctx context.Context, tx *sql.Tx) error{
	4: compactUserRows,
	// 5 to 6 adds the packed users' table (packedSchema, created with the snapshot's):
	// a build that cannot read it must not open the store and answer its users as unseen.
	5: func(context.Context, *sql.Tx) error { return nil },
	// 6 to 7 marks the outbox's compact rows (its at column, outboxCompact, added before the
	// steps): a build that cannot rebuild their envelopes must not open the store and find
	// its outbox damaged.
	6: func(context.Context, *sql.Tx) error { return nil },
}

// ErrSnapshotVersion is wrapped by Open for a store whose snapshot this build cannot
// read: written by a newer version (or of an unknown one), or too old to migrate once
// its log was compacted. Run the version that wrote it, or restore a backup.
var ErrSnapshotVersion = errors.New("the view's snapshot is of a version this build cannot read")

// logSchema is what is durable on the hot path: the log (one row per connection event or
// grace decision, no secondary index; compaction removes its rows), the queue (one row per
// accepted message, indexed by its id and user for idempotency, its position handed out by
// the writer, queueTop; see queueFloorKey and streamFloorKey; PruneMessages removes its
// rows past the retention), and the outbox (one row per published event, written in the
// commit of what decided it, so it needs no index to be published once; a row holds its
// envelope or, most, only the envelope's detail and its time, envelope.go; PrunePublished
// removes its rows past the retention). Neither the queue nor the outbox is AUTOINCREMENT
// (a page of sqlite_sequence written by every commit): a position is never handed out
// twice because the message prune keeps the queue's newest row, and the outbox's newest
// pruned position is recorded (outboxFloorTrigger) and the next row written above it
// (publishAboveFloor).
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
	seq         INTEGER PRIMARY KEY,
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
	seq         INTEGER PRIMARY KEY,
	message_id  TEXT    NOT NULL,
	user_id     TEXT    NOT NULL,
	body        TEXT    NOT NULL,
	enqueued_at INTEGER NOT NULL,
	done_at     INTEGER,
	UNIQUE (message_id, user_id)
);
-- crc is added by migrate (messageCRC); published's at by migrate (outboxCompact).
-- stream_offset and stream_gen are added by migrate (streamColumns).
CREATE TABLE IF NOT EXISTS recovering (
	connection_id TEXT PRIMARY KEY,
	user_id       TEXT NOT NULL
) WITHOUT ROWID;
-- closed_at and its index are added by migrate (recoveringClosed).
`

// outboxCompact gives an outbox row the time of its event, in seconds, for a row that
// holds only its envelope's detail (envelope.go); NULL for a row that holds its whole
// envelope (every row of an earlier layout).
const outboxCompact = `ALTER TABLE published ADD COLUMN at INTEGER`

// recoveringClosed gives a row of recovering the time its connection closed (NULL while it
// is live), so that a start after a kill knows which users closed an opted-in connection
// within the recovery window; the index finds the rows past it (MarkRecovering,
// TakeRecovering remove them).
var recoveringClosed = []string{
	`ALTER TABLE recovering ADD COLUMN closed_at INTEGER`,
	`CREATE INDEX IF NOT EXISTS recovering_closed ON recovering (closed_at) WHERE closed_at IS NOT NULL`,
}

// snapshotSchema holds the view's last snapshot: its rows as of the checkpoint, the log
// position it folded up to. A start reads the rows of the active users and the live
// connections (the memory image); the fold and the reads read the others on demand. A
// user's row stays while the user is active and then for the user retention past its last
// activity (its last activity answers GET /user/online; PruneUsers removes it); what
// removes a connection's row is the tombstone retention (PruneTombstones, by
// view_connections_closed).
//
// A user's row is what a visit leaves for a year, so it is kept small: the announced state
// is 1 (online) or 0 (offline), which like a live count of 0 or 1 takes no byte past its
// type in the record; offline_gap is how long before its last activity the user went
// offline (last_activity - offline_since, in ns: 0, no byte, for a user whose last event
// was its last close; NULL while not offline); crc is a signed 32-bit checksum (4 bytes).
// The active users' index holds the online users and those in their grace period only.
// Users offline for long leave view_users for view_users_packed (packed.go).
const snapshotSchema = `
CREATE TABLE IF NOT EXISTS checkpoints (
	name TEXT PRIMARY KEY,
	seq  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_users (
	user_id       TEXT    PRIMARY KEY,
	live          INTEGER NOT NULL,
	last_activity INTEGER,
	announced     INTEGER NOT NULL,
	offline_gap   INTEGER,
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
CREATE INDEX IF NOT EXISTS view_users_active ON view_users (user_id) WHERE live > 0 OR announced = 1;
CREATE INDEX IF NOT EXISTS view_connections_closed ON view_connections (closed_at);
` + packedSchema

const dropSnapshot = `
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS view_users;
DROP TABLE IF EXISTS view_connections;
DROP TABLE IF EXISTS view_users_packed;
`

// legacyLog moves the log of a store written by an earlier version (the events table,
// with its key index and columns) into the log table, in order.
const legacyLog = `
INSERT INTO log (seq, type, data) SELECT seq, type, data FROM events ORDER BY seq;
DROP TABLE events;
`

// streamColumns give a queue row its position in its user's stream (stream.go;
// PruneStreams clears them past the recovery window). The positions are indexed in memory
// (streamTable), not in SQLite.
var streamColumns = []string{
	`ALTER TABLE messages ADD COLUMN stream_offset INTEGER`,
	`ALTER TABLE messages ADD COLUMN stream_gen INTEGER`,
}

// dropStreamIndex drops the index of stream positions of an earlier version (a page write
// per user a commit), first recording through it the stream floor (streamFloorKey), so the
// first start without it reads only the rows that hold positions.
func dropStreamIndex(ctx context.Context, db *sql.DB) error {
	var has int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'messages_stream'`).Scan(&has); err != nil || has == 0 {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	floor, err := readFloor(ctx, tx, streamFloorKey)
	if err != nil {
		return err
	}
	var oldest int64
	if err := tx.QueryRowContext(ctx, `SELECT IFNULL((SELECT MIN(seq) FROM messages WHERE stream_offset IS NOT NULL),
		(SELECT IFNULL(MAX(seq), 0) + 1 FROM messages))`).Scan(&oldest); err != nil {
		return err
	}
	if oldest-1 > floor {
		if err := writeFloor(ctx, tx, streamFloorKey, oldest-1); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DROP INDEX messages_stream`); err != nil {
		return err
	}
	return tx.Commit()
}

// outboxFloorKey is the meta row holding the outbox floor: the newest outbox position
// the prune deleted while it was the newest row, kept so the next row is written above it.
const outboxFloorKey = "outbox_floor"

// outboxFloorTrigger records the outbox floor in the transaction of the delete that
// removes the outbox's newest row (whatever deletes it).
const outboxFloorTrigger = `CREATE TRIGGER IF NOT EXISTS published_floor AFTER DELETE ON published
WHEN old.seq > IFNULL((SELECT MAX(seq) FROM published), 0)
BEGIN
	INSERT OR REPLACE INTO meta (key, value) VALUES ('` + outboxFloorKey + `',
		CAST(MAX(old.seq, IFNULL((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '` + outboxFloorKey + `'), 0)) AS TEXT));
END`

// dropAutoincrement rebuilds table, of an earlier layout declared AUTOINCREMENT, without
// it (its columns, rows and indexes as they were), in one transaction. The newest position
// the table handed out (its sqlite_sequence row) is kept: the outbox's as the outbox
// floor, the queue's as a done row without id or body at that position (read by nothing,
// deleted by the message prune once newer rows exist).
func dropAutoincrement(ctx context.Context, db *sql.DB, table string) error {
	var create string
	if err := db.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&create); err != nil {
		return err
	}
	if !strings.Contains(strings.ToUpper(create), "AUTOINCREMENT") {
		return nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var cols []string
	if err := scanEach(ctx, tx, `SELECT name FROM pragma_table_info(?) ORDER BY cid`, func(r *sql.Rows) error {
		var c string
		err := r.Scan(&c)
		cols = append(cols, `"`+c+`"`)
		return err
	}, table); err != nil {
		return err
	}
	var indexes []string
	if err := scanEach(ctx, tx, `SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL`, func(r *sql.Rows) error {
		var q string
		err := r.Scan(&q)
		indexes = append(indexes, q)
		return err
	}, table); err != nil {
		return err
	}
	var assigned, newest int64
	if err := tx.QueryRowContext(ctx, `SELECT IFNULL((SELECT seq FROM sqlite_sequence WHERE name = ?), 0), IFNULL((SELECT MAX(seq) FROM `+table+`), 0)`,
		table).Scan(&assigned, &newest); err != nil {
		return err
	}
	rebuilt := table + "_rebuilt"
	i := strings.Index(create, "(")
	list := strings.Join(cols, ", ")
	for _, q := range []string{
		`CREATE TABLE ` + rebuilt + ` ` + strings.Replace(strings.Replace(create[i:], "AUTOINCREMENT", "", 1), "autoincrement", "", 1),
		`INSERT INTO ` + rebuilt + ` (` + list + `) SELECT ` + list + ` FROM ` + table + ` ORDER BY seq`,
		`DROP TABLE ` + table,
		`ALTER TABLE ` + rebuilt + ` RENAME TO ` + table,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	for _, q := range indexes {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	if assigned > newest {
		switch table {
		case outboxTable:
			if err := writeFloor(ctx, tx, outboxFloorKey, assigned); err != nil {
				return err
			}
		default:
			if _, err := tx.ExecContext(ctx, `INSERT INTO messages (seq, message_id, user_id, body, enqueued_at, done_at) VALUES (?, '', '', '', 0, 0)`, assigned); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// addColumn runs stmts (adding column to table, and what goes with it) unless table already
// has column; what names the addition in errors.
func addColumn(ctx context.Context, db *sql.DB, table, column, what string, stmts ...string) error {
	var has int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, table, column).Scan(&has); err != nil {
		return fmt.Errorf("look for %s: %w", what, err)
	}
	if has > 0 {
		return nil
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("add %s: %w", what, err)
		}
	}
	return nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, logSchema); err != nil {
		return fmt.Errorf("create log tables: %w", err)
	}
	if err := addColumn(ctx, db, "messages", "stream_offset", "stream positions", streamColumns...); err != nil {
		return err
	}
	if err := addColumn(ctx, db, outboxTable, "at", "the outbox's compact rows", outboxCompact); err != nil {
		return err
	}
	if err := addColumn(ctx, db, "recovering", "closed_at", "the recovering connections' close times", recoveringClosed...); err != nil {
		return err
	}
	if err := dropStreamIndex(ctx, db); err != nil {
		return fmt.Errorf("drop the index of stream positions: %w", err)
	}
	// The queue's pending and done rows are not indexed: a start reads the pending ones
	// from the queue floor on (PendingMessages), the prune the done ones in queue order
	// (PruneMessages). Indexes of earlier versions cost a page write per commit each.
	if _, err := db.ExecContext(ctx, `DROP INDEX IF EXISTS messages_pending; DROP INDEX IF EXISTS messages_done`); err != nil {
		return fmt.Errorf("drop the queue's state indexes: %w", err)
	}
	// Rows of the log, the outbox and the queue carry a checksum (rowCRC, messageCRC);
	// rows written before it have none (NULL) and are read unchecked.
	for _, table := range []string{"log", "published", "messages"} {
		if err := addColumn(ctx, db, table, "crc", "the "+table+" checksums", `ALTER TABLE `+table+` ADD COLUMN crc INTEGER`); err != nil {
			return err
		}
	}
	for _, table := range []string{"messages", outboxTable} {
		if err := dropAutoincrement(ctx, db, table); err != nil {
			return fmt.Errorf("rebuild %s without AUTOINCREMENT: %w", table, err)
		}
	}
	if _, err := db.ExecContext(ctx, outboxFloorTrigger); err != nil {
		return fmt.Errorf("create the outbox floor's trigger: %w", err)
	}
	var legacy int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'`).Scan(&legacy); err != nil {
		return fmt.Errorf("look for an earlier log: %w", err)
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
	version, err := snapshotVersion(ctx, tx)
	if err != nil {
		return err
	}
	switch {
	case version > viewVersion:
		return fmt.Errorf("%w: it is of version %d, this build reads up to %d: run the version that wrote it, or restore a backup",
			ErrSnapshotVersion, version, viewVersion)
	case version < firstStep:
		// Written before the log was compacted: folded again from the whole log.
		var first sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(seq) FROM log`).Scan(&first); err != nil {
			return fmt.Errorf("read the log's first position: %w", err)
		}
		if first.Valid && first.Int64 != 1 {
			return fmt.Errorf("%w: it is of version %d, which cannot be migrated, and the log before position %d is gone: restore a backup",
				ErrSnapshotVersion, version, first.Int64)
		}
		if _, err := tx.ExecContext(ctx, dropSnapshot); err != nil {
			return fmt.Errorf("drop old snapshot: %w", err)
		}
		version = viewVersion
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for ; version < viewVersion; version++ {
		if err := migrateStep(ctx, db, version); err != nil {
			return fmt.Errorf("migrate the view's snapshot from version %d to %d: %w", version, version+1, err)
		}
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, snapshotSchema); err != nil {
		return fmt.Errorf("create snapshot tables: %w", err)
	}
	if err := setSnapshotVersion(ctx, tx, viewVersion); err != nil {
		return err
	}
	return tx.Commit()
}

// snapshotVersion reads the snapshot's version: 0 when none is recorded (a new store, or
// one written before the version was).
func snapshotVersion(ctx context.Context, tx *sql.Tx) (int, error) {
	var v string
	err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'view_version'`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read view version: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: its version %q is unknown: restore a backup", ErrSnapshotVersion, v)
	}
	return n, nil
}

func setSnapshotVersion(ctx context.Context, tx *sql.Tx, v int) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('view_version', ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, strconv.Itoa(v)); err != nil {
		return fmt.Errorf("write view version: %w", err)
	}
	return nil
}

// migrateStep runs the step from version v to v+1 and records v+1, in one transaction.
func migrateStep(ctx context.Context, db *sql.DB, v int) error {
	step := snapshotSteps[v]
	if step == nil {
		return fmt.Errorf("%w: no step from version %d", ErrSnapshotVersion, v)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := step(ctx, tx); err != nil {
		return err
	}
	if err := setSnapshotVersion(ctx, tx, v+1); err != nil {
		return err
	}
	return tx.Commit()
}

// compactUserRows takes view_users from version 4 (announced as TEXT, offline_since) to 5
// (announced as 0 or 1, offline_gap, a signed 32-bit checksum). Each row is checked against
// its version-4 checksum; a row that fails it is written with a checksum that fails too,
// so its damage stays detected as before.
func compactUserRows(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `ALTER TABLE view_users RENAME TO view_users_v4;
		DROP INDEX IF EXISTS view_users_active;`+snapshotSchema); err != nil {
		return fmt.Errorf("create the new user rows: %w", err)
	}
	ins, err := tx.PrepareContext(ctx, `INSERT INTO view_users (user_id, live, last_activity, announced, offline_gap, crc) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	rows, err := tx.QueryContext(ctx, `SELECT user_id, live, last_activity, announced, offline_since, crc FROM view_users_v4`)
	if err != nil {
		return fmt.Errorf("read the user rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, announced string
		var live int
		var last, since sql.NullInt64
		var crc int64
		if err := rows.Scan(&id, &live, &last, &announced, &since, &crc); err != nil {
			return fmt.Errorf("read the user rows: %w", err)
		}
		online := 0
		if announced == "online" {
			online = 1
		}
		gap := offlineGap(last, since)
		sum := userCRC(id, live, last, gap, online)
		if crc != userCRCv4(id, live, last, since, announced) {
			sum ^= 1
		}
		if _, err := ins.ExecContext(ctx, id, live, last, online, gap, sum); err != nil {
			return fmt.Errorf("write the row of user %q: %w", id, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read the user rows: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE view_users_v4`); err != nil {
		return fmt.Errorf("drop the earlier user rows: %w", err)
	}
	return nil
}

// userCRCv4 is the checksum of a version-4 user row.
func userCRCv4(id string, live int, last, since sql.NullInt64, announced string) int64 {
	return int64(crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s\x00%d\x00%v\x00%v\x00%s", id, live, last, since, announced))))
}
