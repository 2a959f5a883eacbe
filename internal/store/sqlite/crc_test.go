package sqlite

import (
	"database/sql"
	"hash/crc32"
	"strings"
	"testing"
)

// The checksums are stored with the rows: computing them another way must give the same
// values, or every row written before would read as damaged.
func TestRowCRCIsTheChecksumOfKindZeroText(t *testing.T) {
	for _, kind := range []string{"", "message", "ConnectionOpened", "MessageDelivered"} {
		for _, text := range []string{"", "x", `{"userId":"u1"}`, strings.Repeat("é", 300)} {
			want := int64(crc32.ChecksumIEEE([]byte(kind + "\x00" + text)))
			if got := rowCRC(kind, []byte(text)); got != want {
				t.Errorf("rowCRC(%q, %q) = %d, want %d", kind, text, got, want)
			}
		}
	}
}

func TestMessageCRCIsTheChecksumOfTheRowsFields(t *testing.T) {
	big := strings.Repeat("b", 2*maxCRCBuf) // a buffer that outgrows the pool's
	for _, c := range []struct {
		offset, gen sql.NullInt64
		body, want  string
	}{
		{sql.NullInt64{}, sql.NullInt64{}, "hello", "-\x00-\x00hello"},
		{sql.NullInt64{Int64: 7, Valid: true}, sql.NullInt64{Int64: -2, Valid: true}, "", "7\x00-2\x00"},
		{sql.NullInt64{Int64: 1, Valid: true}, sql.NullInt64{Int64: 3, Valid: true}, big, "1\x003\x00" + big},
		{sql.NullInt64{}, sql.NullInt64{}, "again", "-\x00-\x00again"},
	} {
		want := int64(crc32.ChecksumIEEE([]byte("message\x00m-1\x00user 1\x001733380000000000000\x00" + c.want)))
		if got := messageCRC("m-1", "user 1", 1733380000000000000, c.offset, c.gen, c.body); got != want {
			t.Errorf("messageCRC(%v, %v, %d-byte body) = %d, want %d", c.offset, c.gen, len(c.body), got, want)
		}
	}
}
