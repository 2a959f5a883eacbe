package dynamo

import (
	"strconv"

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
//	online        "1" while live is not empty (the sparse index of online users)
//	lastActivity, offlineSince, horizon (N, Unix ns), announced (S)
//	outbox        the transitions this write recorded, as a list of {t: detail-type,
//	              d: detail JSON}; the table's stream publishes them (package publisher)
const (
	attrVersion = "v"
	attrConns   = "conns"
	attrOutbox  = "outbox"
)

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

// encodeState returns the user item of s at version v, recording publish as its outbox.
func encodeState(state presence.State, v int64, publish []events.Published) (map[string]types.AttributeValue, error) {
	item := userKey(state.User.ID)
	item[attrVersion] = num(v)
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
		item["online"] = s(onlineMark)
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
	if len(publish) > 0 {
		out := make([]types.AttributeValue, len(publish))
		for i, p := range publish {
			st, err := events.Store(p)
			if err != nil {
				return nil, err
			}
			out[i] = &types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"t": s(string(st.Type)), "d": s(string(st.Detail))}}
		}
		item[attrOutbox] = &types.AttributeValueMemberL{Value: out}
	}
	return item, nil
}

// decodeState reads a user item (nil: a user never seen) into its state and version.
func decodeState(userID string, item map[string]types.AttributeValue) (presence.State, int64) {
	st := presence.NewState(userID)
	if item == nil {
		return st, 0
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
	return st, integer(item, attrVersion)
}

// ItemSize is the size of the user item that holds s, as DynamoDB counts it against its
// 400 KB item limit (attribute names plus values; a number counted as its digits, an
// upper bound of DynamoDB's encoding).
func ItemSize(s presence.State) (int, error) {
	item, err := encodeState(s, 1, nil)
	if err != nil {
		return 0, err
	}
	return mapSize(item), nil
}

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
