package sqlite

// viewVersion changes whenever the view tables change shape: a store whose view has another
// version (or none) drops it and rebuilds it from the log.
const viewVersion = "2"

const logSchema = `
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	key           TEXT    NOT NULL UNIQUE,
	type          TEXT    NOT NULL,
	user_id       TEXT    NOT NULL,
	connection_id TEXT    NOT NULL,
	at            INTEGER NOT NULL,
	data          TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS published (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	event_id    TEXT    NOT NULL UNIQUE,
	detail_type TEXT    NOT NULL,
	envelope    TEXT    NOT NULL
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
CREATE INDEX IF NOT EXISTS messages_pending ON messages (seq) WHERE done_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
`

const viewSchema = `
CREATE TABLE IF NOT EXISTS checkpoints (
	name TEXT PRIMARY KEY,
	seq  INTEGER NOT NULL
) WITHOUT ROWID;
-- online, grace_pending and is_live hold what the core decided for the row (presence's
-- User.Online, User.GracePending, Conn.Live): the queries read these flags and re-state no
-- presence rule.
CREATE TABLE IF NOT EXISTS view_users (
	user_id       TEXT    PRIMARY KEY,
	live          INTEGER NOT NULL,
	last_activity INTEGER,
	announced     TEXT    NOT NULL,
	offline_since INTEGER,
	online        INTEGER NOT NULL,
	grace_pending INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS view_users_online ON view_users (user_id) WHERE online = 1;
CREATE INDEX IF NOT EXISTS view_users_grace ON view_users (offline_since) WHERE grace_pending = 1;
CREATE TABLE IF NOT EXISTS view_connections (
	connection_id TEXT PRIMARY KEY,
	user_id       TEXT NOT NULL,
	opened_at     INTEGER,
	closed_at     INTEGER,
	reason        TEXT,
	last_seen     INTEGER,
	is_live       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS view_connections_live ON view_connections (user_id) WHERE is_live = 1;
CREATE INDEX IF NOT EXISTS view_connections_closed ON view_connections (closed_at) WHERE closed_at IS NOT NULL;
`

const dropView = `
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS view_users;
DROP TABLE IF EXISTS view_connections;
`
