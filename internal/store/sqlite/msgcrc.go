package sqlite

import (
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strconv"
	"sync"

	sqlitedriver "modernc.org/sqlite"
)

// A queue row carries a checksum (its crc column) over what a delivery or a replay reads
// from it: the message's id, its user, when it was accepted, its stream position and its
// body. The statements that change a row (its outcome forgets the body and marks the
// position gone; PruneStreams forgets positions) compute the new checksum in SQL with
// messageCRCFunc, and only over a row whose old checksum still matches, so a row changed on
// disk stays detectably damaged.

// messageCRCFunc is the name of the SQL function computing a queue row's checksum:
// wsp_message_crc(message_id, user_id, enqueued_at, stream_offset, stream_gen, body).
const messageCRCFunc = "wsp_message_crc"

func init() {
	sqlitedriver.MustRegisterDeterministicScalarFunction(messageCRCFunc, 6, func(_ *sqlitedriver.FunctionContext, args []driver.Value) (driver.Value, error) {
		id, user, body := text(args[0]), text(args[1]), text(args[5])
		at, _ := args[2].(int64)
		return messageCRC(id, user, at, nullable(args[3]), nullable(args[4]), body), nil
	})
}

// text is a TEXT argument of an SQL function (SQLite may hand it over as bytes).
func text(v driver.Value) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// nullable is an INTEGER argument that may be NULL.
func nullable(v driver.Value) sql.NullInt64 {
	n, ok := v.(int64)
	return sql.NullInt64{Int64: n, Valid: ok}
}

// positions are the stream columns of m's row: its position when the store keeps them
// (kept: a recovery window) and m has one (a row read back without one has Offset 0),
// else NULL.
func (m *QueuedMessage) positions(kept bool) (offset, gen sql.NullInt64) {
	if !kept || m.Offset == 0 {
		return offset, gen
	}
	return sql.NullInt64{Int64: m.Offset, Valid: true}, sql.NullInt64{Int64: m.Gen, Valid: true}
}

// messageCRC is the checksum of a queue row: rowCRC("message", ...) over its fields, each
// ended by a zero byte, the body last. The fields are laid out in a buffer of crcBufs (the
// writer computes three a message: a queue row's, and an outcome's old and new).
func messageCRC(id, user string, enqueuedAt int64, offset, gen sql.NullInt64, body string) int64 {
	bp := crcBufs.Get().(*[]byte)
	b := append((*bp)[:0], id...)
	b = append(b, 0)
	b = append(append(b, user...), 0)
	b = append(strconv.AppendInt(b, enqueuedAt, 10), 0)
	for _, n := range [...]sql.NullInt64{offset, gen} {
		if n.Valid {
			b = strconv.AppendInt(b, n.Int64, 10)
		} else {
			b = append(b, '-')
		}
		b = append(b, 0)
	}
	sum := rowCRC("message", append(b, body...))
	if cap(b) <= maxCRCBuf {
		*bp = b[:0]
		crcBufs.Put(bp)
	}
	return sum
}

// crcBufs holds the buffers messageCRC lays a row out in; one that grew past maxCRCBuf (a
// large body) is dropped instead of kept.
var crcBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxCRCBuf is the largest buffer crcBufs keeps.
const maxCRCBuf = 64 << 10

// checkMessage checks a queue row read back (see checkRow).
func (s *Store) checkMessage(seq int64, id, user string, enqueuedAt int64, offset, gen sql.NullInt64, body string, crc sql.NullInt64) error {
	if !crc.Valid || crc.Int64 == messageCRC(id, user, enqueuedAt, offset, gen, body) {
		return nil
	}
	return s.damagedRow("messages", seq)
}
