package dynamo

import (
	"encoding/json"
	"hash/fnv"
	"sort"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// The user item holds one user's whole presence.State, so the fold is one conditional
// write on its version:
//
//	pk, sk        user id, "#USER"
//	v             version (N), the optimistic-concurrency guard of every write
//	conns         map of connection id -> {o: opened, c: closed, r: reason, s: last seen}
//	live          string set of the live connection ids (derived; absent when none)
//	online        the user's shard of the online index ("0" to OnlineShards-1, by a hash
//	              of the user id) while live is not empty (the sparse index of online
//	              users, write-sharded so no key takes more than its share)
//	lastActivity, offlineSince, horizon (N, Unix ns), announced (S)
//	outbox        transitions by event id: {t: detail-type, d: detail JSON, v: version of
//	              the write that recorded it, a: when (Unix ns), x: true once stuck}. A
//	              write holds the transitions it recorded (its stream record carries them
//	              to the relay, package publisher) and the stuck ones: those the relay
//	              could not publish, kept until the reconciler publishes them; a later
//	              write drops the others (their record has them)
//	fresh         "1" on a write that recorded transitions: the relay's event filter
//	gf            the grace period whose timer could not be started or run (its
//	              offlineSince, Unix ns): the reconciler ends it once overdue
//	rs, due       the repair index (sparse): shard and the time the reconciler must look
//	              at the item (a flagged grace period's deadline plus the margin, a stuck
//	              transition's time plus the outbox age); only failures put an item there
const (
	attrVersion   = "v"
	attrConns     = "conns"
	attrOutbox    = "outbox"
	attrShard     = "rs"
	attrDue       = "due"
	attrFresh     = "fresh"
	attrGraceFlag = "gf"
)

// RepairIndex is the name of the view table's sparse index of the user items the
// reconciler must look at: hash key "rs" (one of RepairShards shards), range key "due".
const RepairIndex = "repair"

// RepairShards is the number of partitions of the repair index: its writes spread over
// this many keys, so none carries more than 1/RepairShards of them.
const RepairShards = 16

// entry is an outbox entry: a transition recorded, or stuck (not yet published).
type entry struct {
	event   events.Stored
	version int64
	at      time.Time
	stuck   bool
	// n is the entry's place in the item's outbox list.
	n int64
}

// record is a user item: the user's state and what the store keeps beside it.
type record struct {
	state   presence.State
	version int64
	outbox  []entry
	// graceFlag is the offlineSince of a grace period whose timer was lost.
	graceFlag time.Time
}

func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

func integer(item map[string]types.AttributeValue, name string) int64 {
	v, ok := item[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0
	}
	i, _ := strconv.ParseInt(v.Value, 10, 64)
	return i
}

// shardOf is the shard of a user among n.
func shardOf(userID string, n int) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	return strconv.Itoa(int(h.Sum32() % uint32(max(n, 1))))
}

// encodeState returns the user item of s at version v with no outbox (sizes, comparisons).
func encodeState(state presence.State, v int64) map[string]types.AttributeValue {
	return encode(record{state: state, version: v}, time.Time{}, 1)
}

// encode returns the user item of r, in the online index's shard of onlineShards while
// online; due, when not zero, puts it in the repair index.
func encode(r record, due time.Time, onlineShards int) map[string]types.AttributeValue {
	state := r.state
	item := userKey(state.User.ID)
	item[attrVersion] = num(r.version)
	conns := make(map[string]types.AttributeValue, len(state.Conns))
	for id, c := range state.Conns {
		m := map[string]types.AttributeValue{}
		if !c.OpenedAt.IsZero() {
			m["o"] = n(c.OpenedAt)
		}
		if !c.ClosedAt.IsZero() {
			m["c"] = n(c.ClosedAt)
			m["r"] = s(string(c.Reason))
		}
		if !c.LastSeen.IsZero() {
			m["s"] = n(c.LastSeen)
		}
		conns[id] = &types.AttributeValueMemberM{Value: m}
	}
	item[attrConns] = &types.AttributeValueMemberM{Value: conns}
	if live := state.Live(); len(live) > 0 {
		item["live"] = ss(live...)
		item["online"] = s(shardOf(state.User.ID, onlineShards))
	}
	if !state.User.LastActivity.IsZero() {
		item["lastActivity"] = n(state.User.LastActivity)
	}
	if !state.User.OfflineSince.IsZero() {
		item["offlineSince"] = n(state.User.OfflineSince)
	}
	if !state.Horizon.IsZero() {
		item["horizon"] = n(state.Horizon)
	}
	if state.User.Announced != "" {
		item["announced"] = s(string(state.User.Announced))
	}
	if len(r.outbox) > 0 {
		out := make(map[string]types.AttributeValue, len(r.outbox))
		for i, e := range r.outbox {
			// n keeps the order of the list (a write may record UserOffline then
			// UserOnline: the map alone does not).
			m := map[string]types.AttributeValue{"t": s(string(e.event.Type)), "d": s(string(e.event.Detail)), "v": num(e.version), "a": n(e.at),
				"n": num(int64(i))}
			if e.stuck {
				m["x"] = &types.AttributeValueMemberBOOL{Value: true}
			}
			if e.version == r.version && !e.stuck {
				item[attrFresh] = s("1")
			}
			out[e.event.EventID] = &types.AttributeValueMemberM{Value: m}
		}
		item[attrOutbox] = &types.AttributeValueMemberM{Value: out}
	}
	if !r.graceFlag.IsZero() {
		item[attrGraceFlag] = n(r.graceFlag)
	}
	if !due.IsZero() {
		item[attrShard] = s(shardOf(state.User.ID, RepairShards))
		item[attrDue] = n(due)
	}
	return item
}

// decode reads a user item (nil: a user never seen). An outbox entry that cannot be read
// is left out (the stream's record of its write still carries it).
func decode(userID string, item map[string]types.AttributeValue) record {
	st := presence.NewState(userID)
	if item == nil {
		return record{state: st}
	}
	if m, ok := item[attrConns].(*types.AttributeValueMemberM); ok {
		for id, v := range m.Value {
			cm, ok := v.(*types.AttributeValueMemberM)
			if !ok {
				continue
			}
			c := presence.Conn{ID: id, UserID: userID, OpenedAt: tm(cm.Value, "o"), ClosedAt: tm(cm.Value, "c"),
				Reason: events.CloseReason(str(cm.Value, "r")), LastSeen: tm(cm.Value, "s")}
			st.Conns[id] = c
			if c.Live() {
				st.User.Live++
			}
		}
	}
	st.User.LastActivity = tm(item, "lastActivity")
	st.User.OfflineSince = tm(item, "offlineSince")
	st.User.Announced = presence.Announced(str(item, "announced"))
	st.Horizon = tm(item, "horizon")
	r := record{state: st, version: integer(item, attrVersion), graceFlag: tm(item, attrGraceFlag)}
	if m, ok := item[attrOutbox].(*types.AttributeValueMemberM); ok {
		for id, v := range m.Value {
			em, ok := v.(*types.AttributeValueMemberM)
			if !ok || str(em.Value, "t") == "" || !json.Valid([]byte(str(em.Value, "d"))) {
				continue
			}
			stuck, _ := em.Value["x"].(*types.AttributeValueMemberBOOL)
			r.outbox = append(r.outbox, entry{
				event:   events.Stored{Type: events.DetailType(str(em.Value, "t")), EventID: id, Detail: json.RawMessage(str(em.Value, "d"))},
				version: integer(em.Value, "v"), at: tm(em.Value, "a"), stuck: stuck != nil && stuck.Value, n: integer(em.Value, "n")})
		}
		sortEntries(r.outbox)
	}
	return r
}

// sortEntries orders outbox entries as they were listed.
func sortEntries(es []entry) {
	sort.Slice(es, func(i, j int) bool { return es[i].n < es[j].n })
}

// ItemSize is the size of the user item that holds s, as DynamoDB counts it against its
// 400 KB item limit (attribute names plus values; a number counted as its digits, an
// upper bound of DynamoDB's encoding).
func ItemSize(s presence.State) (int, error) {
	return mapSize(encodeState(s, 1)), nil
}

// SizeOf is the size of an item as DynamoDB counts it for capacity and its 400 KB limit
// (attribute names plus values; a number counted as its digits, an upper bound).
func SizeOf(item map[string]types.AttributeValue) int { return mapSize(item) }

func mapSize(m map[string]types.AttributeValue) int {
	n := 0
	for k, v := range m {
		n += len(k) + valueSize(v)
	}
	return n
}

func valueSize(v types.AttributeValue) int {
	switch x := v.(type) {
	case *types.AttributeValueMemberS:
		return len(x.Value)
	case *types.AttributeValueMemberN:
		return len(x.Value)
	case *types.AttributeValueMemberSS:
		n := 0
		for _, s := range x.Value {
			n += len(s)
		}
		return n
	case *types.AttributeValueMemberM:
		return 3 + mapSize(x.Value) + len(x.Value)
	case *types.AttributeValueMemberL:
		n := 3
		for _, e := range x.Value {
			n += 1 + valueSize(e)
		}
		return n
	}
	return 1
}
