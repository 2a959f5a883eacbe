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

// TestFindPackedFindsEachUserOfItsBlockAndNoOther: every user of a block is found in it
// with its entry, an id not in it (between two, before the first, a prefix of one) is not,
// and a block whose checksum matches but whose ids do not ascend is refused.
func TestFindPackedFindsEachUserOfItsBlockAndNoOther(t *testing.T) {
	var users []packed
	for i := range 600 {
		u := packed{id: fmt.Sprintf("user-%05d", 2*i), last: int64(i) * 1_000_003}
		if i%2 == 0 {
			u.gap = sql.NullInt64{Int64: int64(i % 3), Valid: true}
		}
		users = append(users, u)
	}
	keys, blocks := encodeBlocks(users)
	if len(blocks) < 2 {
		t.Fatalf("%d blocks, want several", len(blocks))
	}
	at := 0
	for i := range keys {
		b, err := decodeBlock(keys[i], blocks[i])
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range b {
			if p, found, err := findPacked(u.id, keys[i], blocks[i]); err != nil || !found || p != users[at] {
				t.Fatalf("%s: %+v, %v, %v; want %+v", u.id, p, found, err, users[at])
			}
			at++
		}
		for _, id := range []string{b[0].id[:len(b[0].id)-1], b[0].id + "0", b[len(b)/2].id + "-", "a"} {
			if p, found, err := findPacked(id, keys[i], blocks[i]); err != nil || found {
				t.Fatalf("%s, not in block %d: %+v, %v, %v", id, i, p, found, err)
			}
		}
	}
	if at != len(users) {
		t.Fatalf("found %d users in the blocks, want %d", at, len(users))
	}
	// Two ids swapped, the checksum written for the result: the order check refuses it.
	b, _ := decodeBlock(keys[0], blocks[0])
	b[3], b[4] = b[4], b[3]
	_, swapped := encodeBlock(b)
	if _, _, err := findPacked(b[0].id, keys[0], swapped); !errors.Is(err, errBlock) {
		t.Fatalf("ids out of order: %v, want errBlock", err)
	}
}
