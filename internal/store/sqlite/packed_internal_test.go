package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// TestBlocksOfPackedUsersDecodeToWhatWasEncoded: users with ids that share prefixes or
// not, of any length, last activities far apart, offline gaps none, 0, positive and
// negative, are decoded as encoded, in blocks each within packBlockBytes with its key;
// any byte changed in a block fails its decoding.
func TestBlocksOfPackedUsersDecodeToWhatWasEncoded(t *testing.T) {
	var users []packed
	for i := range 3000 {
		u := packed{id: fmt.Sprintf("user-%05d", i), last: 1_780_000_000_000_000_000 + int64(i*i)*1_000_003}
		switch i % 4 {
		case 1:
			u.gap = sql.NullInt64{Valid: true}
		case 2:
			u.gap = sql.NullInt64{Int64: int64(i) * 999_999_937, Valid: true}
		case 3:
			u.gap = sql.NullInt64{Int64: -int64(i), Valid: true}
		}
		if i%500 == 0 {
			u.id += string(make([]byte, 300)) // a long id
			u.last = -u.last                  // and a time before 1970
		}
		users = append(users, u)
	}
	keys, blocks := encodeBlocks(users)
	var got []packed
	for i := range keys {
		if len(keys[i])+len(blocks[i])+8 > packBlockBytes {
			t.Fatalf("block %d takes %d bytes with its key, want at most %d", i, len(keys[i])+len(blocks[i])+8, packBlockBytes)
		}
		b, err := decodeBlock(keys[i], blocks[i])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b...)
	}
	if !reflect.DeepEqual(got, users) {
		t.Fatalf("decoded %d users, not the %d encoded", len(got), len(users))
	}
	t.Logf("%d users in %d blocks", len(users), len(blocks))
	b := blocks[1]
	for i := range b {
		damaged := append([]byte{}, b...)
		damaged[i] ^= 0x10
		if _, err := decodeBlock(keys[1], damaged); !errors.Is(err, errBlock) {
			t.Fatalf("byte %d changed: %v, want errBlock", i, err)
		}
	}
	if _, err := decodeBlock(keys[2], b); !errors.Is(err, errBlock) {
		t.Fatalf("a block under another key: %v, want errBlock", err)
	}
}
