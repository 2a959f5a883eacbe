package sqlite

import (
	"bytes"
	"database/sql"
	"time"

	"github.com/wspresence/wspresence/events"
)

// An outbox row holds its event's envelope, or, when the envelope is the one envelopeOf
// rebuilds from the row's other columns (its event id, its detail type and its time, in
// the at column, whole seconds), only the envelope's detail: the rest of the envelope (its
// version, source, account, region and resources, its id and detail type a second time) is
// the same for every row, and was half of each. A row is checked against its checksum
// over the whole envelope, the rebuilt one for a compact row. Rows of an earlier layout
// (at NULL) hold their whole envelope.

// envelopePrefix appends the envelope of the event id of type detailType at at, up to its
// detail, for the local account and region (events.AppendEnvelopeHead).
func envelopePrefix(b []byte, id, detailType string, at time.Time) []byte {
	return events.AppendEnvelopeHead(b, id, detailType, LocalAccount, LocalRegion, at.UTC())
}

// compact returns what an outbox row stores of env, the envelope of the event id of type
// detailType published at at: its detail and the time (in seconds) when the rest is the
// one envelopePrefix writes, else env and NULL. prefix is a buffer it returns grown.
func compact(prefix, env []byte, id, detailType string, at time.Time) (stored []byte, sec sql.NullInt64, buf []byte) {
	t := at.UTC().Truncate(time.Second)
	prefix = envelopePrefix(prefix[:0], id, detailType, t)
	if len(env) > len(prefix) && bytes.HasPrefix(env, prefix) && env[len(env)-1] == '}' {
		return env[len(prefix) : len(env)-1], sql.NullInt64{Int64: t.Unix(), Valid: true}, prefix
	}
	return env, sql.NullInt64{}, prefix
}

// envelopeOf returns the envelope an outbox row holds: stored itself, or for a compact row
// (sec set) the envelope rebuilt around its detail.
func envelopeOf(id, detailType string, stored []byte, sec sql.NullInt64) []byte {
	if !sec.Valid {
		return stored
	}
	b := envelopePrefix(make([]byte, 0, 256+len(stored)), id, detailType, time.Unix(sec.Int64, 0))
	return append(append(b, stored...), '}')
}
