package dynamo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// The per-user message stream of recovery lives in the view table, beside the user item:
//
//	pk, sk "#STREAM"  the stream's head: ep (the epoch, a random id given when the head
//	                  is created), top (the last offset given), last (when, Unix ns),
//	                  f#<connection id> (Unix ms: the connection opted in at $connect) and
//	                  r#<connection id> (0 while its recover runs, then Unix ms: ready for
//	                  live frames), a#<connection id> (the offset its recover answered), ttl.
//	pk, sk "#S#<epoch>#<offset, 20 digits>"  one message: mid, body, at (Unix ns), ttl,
//	                  and h, its held outcome: 1 held (a timer at the window's end
//	                  decides), d replayed (by a recover), D its MessageDelivered
//	                  published, u and U the same for MessageUndeliverable.
//
// What removes them: a message item's ttl is the window past its acceptance plus
// HeldMargin (the held outcome's timer and its retries read it); reads ignore messages
// past the window, so the window is exact whatever TTL's deletion delay. The head's ttl
// is pushed to MaxConnectionLife past every write (it outlives every message and every
// connection it flags); once DynamoDB deleted it, the next head has a new epoch. The
// flags of closed connections are removed by the next recover of one of the user's
// connections.
const (
	streamSK = "#STREAM"
	msgSK    = "#S#"
	// MaxConnectionLife is API Gateway's longest WebSocket connection (2 hours).
	MaxConnectionLife = 2 * time.Hour
	// HeldMargin is how long a message item is kept past the window: its held outcome's
	// timer (due at the window's end) and that timer's retries read it.
	HeldMargin = time.Hour
	// StaleFlag is how old the flag of a connection that is not live must be before a
	// recover removes it ($connect flags a connection before folding its open).
	StaleFlag = time.Minute
)

// ErrNoStream is returned by Allocate for a user without a stream head (no connection of
// the user opted in to recovery recently): the message is delivered as before recovery.
var ErrNoStream = errors.New("no stream")

// ErrNotFramed is returned by Claim for a connection that did not opt in at $connect.
var ErrNotFramed = errors.New("connection did not opt in")

// ErrRecoverRepeated is returned by Claim for a connection whose recover already ran.
var ErrRecoverRepeated = errors.New("recover already sent")

// Head is a user's stream head.
type Head struct {
	Epoch string
	// Top is the last offset given (the one just allocated, from Allocate).
	Top int64
	// Framed holds, by connection id, when each opted-in connection was flagged.
	Framed map[string]time.Time
	// Ready holds the opted-in connections whose recover has answered: they take live
	// message frames.
	Ready map[string]bool
	// ReadySince holds when each ready connection was marked ready, and Answered the
	// offset its recover answered (the client's position then).
	ReadySince map[string]time.Time
	Answered   map[string]int64
}

// StreamMessage is one message of a user's stream.
type StreamMessage struct {
	Epoch     string
	Offset    int64
	MessageID string
	Body      string
	At        time.Time
	// Held is its outcome state ("" none, or one of the Held* values).
	Held string
}

// The held outcome states of a stream message.
const (
	HeldPending       = "1"
	HeldReplayed      = "d"
	HeldDelivered     = "D"
	HeldUndeliverable = "u"
	HeldReported      = "U"
)

func streamKey(userID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s(userID), "sk": s(streamSK)}
}

func messageSK(epoch string, offset int64) string {
	return fmt.Sprintf("%s%s#%020d", msgSK, epoch, offset)
}

func messageKey(userID, epoch string, offset int64) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s(userID), "sk": s(messageSK(epoch, offset))}
}

// NewEpoch returns a random epoch.
func NewEpoch() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func unixSeconds(t time.Time) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(t.Unix(), 10)}
}

func headOf(item map[string]types.AttributeValue) Head {
	h := Head{Epoch: str(item, "ep"), Top: integer(item, "top"), Framed: map[string]time.Time{}, Ready: map[string]bool{},
		ReadySince: map[string]time.Time{}, Answered: map[string]int64{}}
	for name := range item {
		switch {
		case strings.HasPrefix(name, "f#"):
			h.Framed[name[2:]] = time.UnixMilli(integer(item, name))
		case strings.HasPrefix(name, "r#"):
			if ms := integer(item, name); ms > 0 {
				h.Ready[name[2:]] = true
				h.ReadySince[name[2:]] = time.UnixMilli(ms)
			}
		case strings.HasPrefix(name, "a#"):
			h.Answered[name[2:]] = integer(item, name)
		}
	}
	return h
}

// Frame records that a connection opted in (before $connect folds its open, so a sender
// that finds it live finds the flag too) and creates the user's stream head if there is
// none (a new epoch, offset 0). One UpdateItem.
func (st *Store) Frame(ctx context.Context, userID, connectionID string, at time.Time) error {
	_, err := st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                aws.String(st.tables.View),
		Key:                      streamKey(userID),
		UpdateExpression:         aws.String("SET ep = if_not_exists(ep, :e), top = if_not_exists(top, :z), #f = :at, #t = :ttl"),
		ExpressionAttributeNames: map[string]string{"#f": "f#" + connectionID, "#t": "ttl"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":e": s(NewEpoch()), ":z": num(0),
			":at": num(at.UnixMilli()), ":ttl": unixSeconds(at.Add(st.RecoveryWindow + MaxConnectionLife))},
	})
	if err != nil {
		return awsfail.Wrap("flag "+connectionID, err)
	}
	return nil
}

// StreamHead reads a user's stream head (strongly consistent); ok is false when there is
// none.
func (st *Store) StreamHead(ctx context.Context, userID string) (Head, bool, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: streamKey(userID), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return Head{}, false, awsfail.Wrap("read the stream of "+userID, err)
	}
	if out.Item == nil {
		return Head{}, false, nil
	}
	return headOf(out.Item), true, nil
}

// Allocate gives the next offset of the user's stream (Head.Top) and returns the head as
// the allocation left it: the connections' flags at that instant. One UpdateItem; a user
// without a head gets ErrNoStream (the failed condition is billed as a write).
func (st *Store) Allocate(ctx context.Context, userID string, at time.Time) (Head, error) {
	out, err := st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(st.tables.View),
		Key:                       streamKey(userID),
		UpdateExpression:          aws.String("SET top = top + :one, #l = :at, #t = :ttl"),
		ConditionExpression:       aws.String("attribute_exists(top)"),
		ExpressionAttributeNames:  map[string]string{"#l": "last", "#t": "ttl"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":one": num(1), ":at": n(at), ":ttl": unixSeconds(at.Add(st.RecoveryWindow + MaxConnectionLife))},
		ReturnValues:              types.ReturnValueAllNew,
	})
	switch {
	case isConflict(err):
		return Head{}, ErrNoStream
	case err != nil:
		return Head{}, awsfail.Wrap("allocate an offset of "+userID, err)
	}
	return headOf(out.Attributes), nil
}

// PutMessage keeps a message at its position for the window (no-op if that position is
// already written: a retry). One PutItem.
func (st *Store) PutMessage(ctx context.Context, userID string, m StreamMessage) error {
	item := messageKey(userID, m.Epoch, m.Offset)
	item["mid"], item["body"], item["at"] = s(m.MessageID), s(m.Body), n(m.At)
	item["ttl"] = unixSeconds(m.At.Add(st.RecoveryWindow + HeldMargin))
	if m.Held != "" {
		item["h"] = s(m.Held)
	}
	_, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item,
		ConditionExpression: aws.String("attribute_not_exists(sk)")})
	if err != nil && !isConflict(err) {
		return awsfail.Wrap(fmt.Sprintf("keep message %s of %s", m.MessageID, userID), err)
	}
	return nil
}

func messageOf(item map[string]types.AttributeValue) (StreamMessage, bool) {
	sk := str(item, "sk")
	rest, ok := strings.CutPrefix(sk, msgSK)
	if !ok {
		return StreamMessage{}, false
	}
	i := strings.LastIndexByte(rest, '#')
	if i < 0 {
		return StreamMessage{}, false
	}
	off, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return StreamMessage{}, false
	}
	return StreamMessage{Epoch: rest[:i], Offset: off, MessageID: str(item, "mid"), Body: str(item, "body"),
		At: time.Unix(0, integer(item, "at")), Held: str(item, "h")}, true
}

// Messages returns the messages of the user's stream in epoch after offset that are
// still inside the window at now, in offset order (Query, strongly consistent, paged).
func (st *Store) Messages(ctx context.Context, userID, epoch string, after int64, now time.Time) ([]StreamMessage, error) {
	return st.queryMessages(ctx, userID, epoch, after, now, "")
}

// FindMessage returns the message with that id in the user's stream in epoch, if it is
// still inside the window (a retried queue message finds the position it was given).
func (st *Store) FindMessage(ctx context.Context, userID, epoch, messageID string, now time.Time) (StreamMessage, bool, error) {
	ms, err := st.queryMessages(ctx, userID, epoch, 0, now, messageID)
	if err != nil || len(ms) == 0 {
		return StreamMessage{}, false, err
	}
	return ms[0], true, nil
}

func (st *Store) queryMessages(ctx context.Context, userID, epoch string, after int64, now time.Time, messageID string) ([]StreamMessage, error) {
	in := &dynamodb.QueryInput{
		TableName:              aws.String(st.tables.View),
		KeyConditionExpression: aws.String("pk = :u AND sk BETWEEN :lo AND :hi"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":u": s(userID),
			":lo": s(messageSK(epoch, after+1)), ":hi": s(messageSK(epoch, 1<<62))},
		ConsistentRead: aws.Bool(true),
	}
	if messageID != "" {
		in.FilterExpression = aws.String("mid = :m")
		in.ExpressionAttributeValues[":m"] = s(messageID)
	}
	var out []StreamMessage
	for {
		page, err := st.db.Query(ctx, in)
		if err != nil {
			return nil, awsfail.Wrap("read the stream of "+userID, err)
		}
		for _, item := range page.Items {
			if m, ok := messageOf(item); ok && now.Before(m.At.Add(st.RecoveryWindow)) {
				out = append(out, m)
			}
		}
		if len(page.LastEvaluatedKey) == 0 {
			break
		}
		in.ExclusiveStartKey = page.LastEvaluatedKey
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out, nil
}

// Message reads one message item, whatever its age (the held outcome's timer).
func (st *Store) Message(ctx context.Context, userID, epoch string, offset int64) (StreamMessage, bool, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View),
		Key: messageKey(userID, epoch, offset), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return StreamMessage{}, false, awsfail.Wrap("read a message of "+userID, err)
	}
	m, ok := messageOf(out.Item)
	return m, ok, nil
}

// SetHeld moves a message's held state to to if it is one of from ("" matches a message
// with none) and returns the state it found (the one it replaced, or the one that kept it
// from changing; "" also when the message is gone). One UpdateItem.
func (st *Store) SetHeld(ctx context.Context, userID, epoch string, offset int64, to string, from ...string) (string, bool, error) {
	conds := make([]string, 0, len(from))
	vals := map[string]types.AttributeValue{":to": s(to)}
	for i, f := range from {
		if f == "" {
			conds = append(conds, "attribute_not_exists(h)")
			continue
		}
		k := ":f" + strconv.Itoa(i)
		vals[k] = s(f)
		conds = append(conds, "h = "+k)
	}
	out, err := st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                           aws.String(st.tables.View),
		Key:                                 messageKey(userID, epoch, offset),
		UpdateExpression:                    aws.String("SET h = :to"),
		ConditionExpression:                 aws.String("attribute_exists(sk) AND (" + strings.Join(conds, " OR ") + ")"),
		ExpressionAttributeValues:           vals,
		ReturnValues:                        types.ReturnValueAllOld,
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var ccf *types.ConditionalCheckFailedException
	switch {
	case errors.As(err, &ccf):
		if ccf.Item != nil {
			return str(ccf.Item, "h"), false, nil
		}
		// An emulator that does not return the item: read it.
		m, _, rerr := st.Message(ctx, userID, epoch, offset)
		return m.Held, false, rerr
	case err != nil:
		return "", false, awsfail.Wrap("mark a message of "+userID, err)
	}
	return str(out.Attributes, "h"), true, nil
}

// Claim starts a connection's recover (r#<id> = 0: not yet ready) and returns the head.
// A connection that did not opt in gets ErrNotFramed, a second recover ErrRecoverRepeated.
func (st *Store) Claim(ctx context.Context, userID, connectionID string) (Head, error) {
	out, err := st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                           aws.String(st.tables.View),
		Key:                                 streamKey(userID),
		UpdateExpression:                    aws.String("SET #r = :z"),
		ConditionExpression:                 aws.String("attribute_exists(#f) AND attribute_not_exists(#r)"),
		ExpressionAttributeNames:            map[string]string{"#f": "f#" + connectionID, "#r": "r#" + connectionID},
		ExpressionAttributeValues:           map[string]types.AttributeValue{":z": num(0)},
		ReturnValues:                        types.ReturnValueAllNew,
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var ccf *types.ConditionalCheckFailedException
	switch {
	case errors.As(err, &ccf):
		item := ccf.Item
		if item == nil {
			h, _, rerr := st.StreamHead(ctx, userID)
			if rerr != nil {
				return Head{}, rerr
			}
			if _, ok := h.Framed[connectionID]; ok {
				return Head{}, ErrRecoverRepeated
			}
			return Head{}, ErrNotFramed
		}
		if _, ok := item["r#"+connectionID]; ok {
			return Head{}, ErrRecoverRepeated
		}
		return Head{}, ErrNotFramed
	case err != nil:
		return Head{}, awsfail.Wrap("start the recover of "+connectionID, err)
	}
	return headOf(out.Attributes), nil
}

// Ready marks a connection ready for live frames from the offset its recover answered
// and removes the flags of the stale connections given (closed ones); it returns the head
// after the write (its top: the offsets a sender may have skipped the connection for are
// at most that). One UpdateItem.
func (st *Store) Ready(ctx context.Context, userID, connectionID string, at time.Time, answered int64, stale []string) (Head, error) {
	names := map[string]string{"#r": "r#" + connectionID, "#a": "a#" + connectionID, "#t": "ttl"}
	expr := "SET #r = :at, #a = :ans, #t = :ttl"
	if len(stale) > 0 {
		var rm []string
		for i, c := range stale {
			k := strconv.Itoa(i)
			names["#sf"+k], names["#sr"+k], names["#sa"+k] = "f#"+c, "r#"+c, "a#"+c
			rm = append(rm, "#sf"+k, "#sr"+k, "#sa"+k)
		}
		expr += " REMOVE " + strings.Join(rm, ", ")
	}
	out, err := st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                aws.String(st.tables.View),
		Key:                      streamKey(userID),
		UpdateExpression:         aws.String(expr),
		ExpressionAttributeNames: names,
		ExpressionAttributeValues: map[string]types.AttributeValue{":at": num(max(at.UnixMilli(), 1)), ":ans": num(answered),
			":ttl": unixSeconds(at.Add(st.RecoveryWindow + MaxConnectionLife))},
		ReturnValues: types.ReturnValueAllNew,
	})
	if err != nil {
		return Head{}, awsfail.Wrap("mark "+connectionID+" ready", err)
	}
	return headOf(out.Attributes), nil
}
