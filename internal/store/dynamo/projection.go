package dynamo

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// TombstoneTTL is how long after its close a connection item expires through the table's
// TTL (attribute expiresAt, epoch seconds): a backstop twice the sweeper's retention, which
// also forgets the connection in the user's closed set.
const TombstoneTTL = 48 * time.Hour

// Grace is a grace period to start: when UserID's live set became empty at Since.
type Grace struct {
	UserID string
	Since  time.Time
}

// Effects are what applying one event asks the caller to do after the view is updated:
// publish events (their ids are stable, so publishing again after a retry is safe) and
// start a grace timer (idempotent by user and Since).
type Effects struct {
	Publish []events.Published
	Grace   *Grace
}

// Apply folds one event of the log into the view with single-item conditional updates. It
// is idempotent and order-independent: applying an event again, or events in any order,
// leaves the same view, and a retry after a failure returns the effects the first attempt
// could not complete.
func (st *Store) Apply(ctx context.Context, e events.ConnectionEvent) (Effects, error) {
	if err := e.Validate(); err != nil {
		return Effects{}, err
	}
	var eff Effects
	var err error
	switch e.Type {
	case events.TypeConnectionOpened:
		eff, err = st.applyOpen(ctx, e)
	case events.TypeConnectionClosed:
		eff, err = st.applyClose(ctx, e)
	case events.TypeActivityRecorded:
		err = st.touchConn(ctx, e)
	}
	if err != nil {
		return eff, err
	}
	return eff, st.touchUser(ctx, e)
}

func (st *Store) update(ctx context.Context, op string, in *dynamodb.UpdateItemInput) (map[string]types.AttributeValue, error) {
	in.TableName = aws.String(st.tables.View)
	out, err := st.db.UpdateItem(ctx, in)
	if err != nil {
		return nil, awsfail.Wrap(op, err)
	}
	return out.Attributes, nil
}

// updateIf runs a conditional update; ok is false (and err nil) when the condition failed.
func (st *Store) updateIf(ctx context.Context, op string, in *dynamodb.UpdateItemInput) (map[string]types.AttributeValue, bool, error) {
	in.TableName = aws.String(st.tables.View)
	out, err := st.db.UpdateItem(ctx, in)
	switch {
	case err == nil:
		return out.Attributes, true, nil
	case isConflict(err):
		return nil, false, nil
	default:
		return nil, false, awsfail.Wrap(op, err)
	}
}

func (st *Store) user(ctx context.Context, userID string) (map[string]types.AttributeValue, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: userKey(userID), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, awsfail.Wrap("read user "+userID, err)
	}
	return out.Item, nil
}

func (st *Store) applyOpen(ctx context.Context, e events.ConnectionEvent) (Effects, error) {
	var eff Effects
	vals := map[string]types.AttributeValue{":at": n(e.At), ":c": s(e.ConnectionID), ":ip": s(e.SourceIP), ":ua": s(e.UserAgent)}
	if _, err := st.update(ctx, "record open of "+e.ConnectionID, &dynamodb.UpdateItemInput{
		Key: connKey(e.UserID, e.ConnectionID),
		UpdateExpression: aws.String("SET connectionId = :c, openedAt = if_not_exists(openedAt, :at), " +
			"lastSeen = if_not_exists(lastSeen, :at), sourceIp = if_not_exists(sourceIp, :ip), userAgent = if_not_exists(userAgent, :ua)"),
		ExpressionAttributeValues: vals,
	}); err != nil {
		return eff, err
	}
	// Add to the live set unless the connection is already closed: close wins.
	user, ok, err := st.updateIf(ctx, "open "+e.ConnectionID, &dynamodb.UpdateItemInput{
		Key:                       userKey(e.UserID),
		UpdateExpression:          aws.String("ADD live :cs SET #o = :one REMOVE offlineSince"),
		ConditionExpression:       aws.String("attribute_not_exists(closed) OR NOT contains(closed, :c)"),
		ExpressionAttributeNames:  map[string]string{"#o": "online"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":cs": ss(e.ConnectionID), ":c": s(e.ConnectionID), ":one": s(onlineMark)},
		ReturnValues:              types.ReturnValueAllNew,
	})
	if err != nil || !ok {
		return eff, err
	}
	if str(user, "announced") == "online" {
		if str(user, "onlineBy") == e.ConnectionID {
			// A retry of the record that announced the user: publish again, same id.
			eff.Publish = append(eff.Publish, events.NewUserOnline(e.UserID, e.ConnectionID, tm(user, "onlineAt")))
		}
		return eff, nil
	}
	_, ok, err = st.updateIf(ctx, "announce "+e.UserID+" online", &dynamodb.UpdateItemInput{
		Key:                       userKey(e.UserID),
		UpdateExpression:          aws.String("SET announced = :online, onlineBy = :c, onlineAt = :at"),
		ConditionExpression:       aws.String("attribute_exists(live) AND (attribute_not_exists(announced) OR announced <> :online)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":online": s("online"), ":c": s(e.ConnectionID), ":at": n(e.At)},
	})
	if err != nil {
		return eff, err
	}
	if ok {
		eff.Publish = append(eff.Publish, events.NewUserOnline(e.UserID, e.ConnectionID, e.At))
		return eff, nil
	}
	// Someone else announced the user meanwhile, or this is a retry after we did.
	cur, err := st.user(ctx, e.UserID)
	if err != nil {
		return eff, err
	}
	if str(cur, "announced") == "online" && str(cur, "onlineBy") == e.ConnectionID {
		eff.Publish = append(eff.Publish, events.NewUserOnline(e.UserID, e.ConnectionID, tm(cur, "onlineAt")))
	}
	return eff, nil
}

func (st *Store) applyClose(ctx context.Context, e events.ConnectionEvent) (Effects, error) {
	var eff Effects
	if _, err := st.update(ctx, "record close of "+e.ConnectionID, &dynamodb.UpdateItemInput{
		Key:              connKey(e.UserID, e.ConnectionID),
		UpdateExpression: aws.String("SET connectionId = :c, closedAt = if_not_exists(closedAt, :at), reason = if_not_exists(reason, :r), expiresAt = :exp"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":c": s(e.ConnectionID), ":at": n(e.At), ":r": s(string(e.Reason)),
			":exp": &types.AttributeValueMemberN{Value: strconv.FormatInt(e.At.Add(TombstoneTTL).Unix(), 10)}},
	}); err != nil {
		return eff, err
	}
	user, err := st.update(ctx, "close "+e.ConnectionID, &dynamodb.UpdateItemInput{
		Key:                       userKey(e.UserID),
		UpdateExpression:          aws.String("ADD closed :cs DELETE live :cs"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":cs": ss(e.ConnectionID)},
		ReturnValues:              types.ReturnValueAllNew,
	})
	if err != nil || len(strs(user, "live")) > 0 {
		return eff, err
	}
	// The live set is empty: leave the online index, and start the grace period if the
	// user was announced online.
	if _, _, err := st.updateIf(ctx, "unlist "+e.UserID, &dynamodb.UpdateItemInput{
		Key:                      userKey(e.UserID),
		UpdateExpression:         aws.String("REMOVE #o"),
		ConditionExpression:      aws.String("attribute_not_exists(live)"),
		ExpressionAttributeNames: map[string]string{"#o": "online"},
	}); err != nil {
		return eff, err
	}
	if str(user, "announced") != "online" {
		return eff, nil
	}
	_, ok, err := st.updateIf(ctx, "start grace of "+e.UserID, &dynamodb.UpdateItemInput{
		Key:              userKey(e.UserID),
		UpdateExpression: aws.String("SET offlineSince = :at"),
		ConditionExpression: aws.String("attribute_not_exists(live) AND announced = :online AND " +
			"(attribute_not_exists(offlineSince) OR offlineSince <= :at)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":at": n(e.At), ":online": s("online")},
	})
	if err != nil {
		return eff, err
	}
	if ok {
		eff.Grace = &Grace{UserID: e.UserID, Since: e.At}
	}
	return eff, nil
}

// touchUser raises the user's lastActivity to e's time.
func (st *Store) touchUser(ctx context.Context, e events.ConnectionEvent) error {
	_, _, err := st.updateIf(ctx, "record activity of "+e.UserID, &dynamodb.UpdateItemInput{
		Key:                       userKey(e.UserID),
		UpdateExpression:          aws.String("SET lastActivity = :at"),
		ConditionExpression:       aws.String("attribute_not_exists(lastActivity) OR lastActivity < :at"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":at": n(e.At)},
	})
	return err
}

// touchConn raises the connection's lastSeen to e's time.
func (st *Store) touchConn(ctx context.Context, e events.ConnectionEvent) error {
	_, _, err := st.updateIf(ctx, "record activity of "+e.ConnectionID, &dynamodb.UpdateItemInput{
		Key:                       connKey(e.UserID, e.ConnectionID),
		UpdateExpression:          aws.String("SET connectionId = :c, lastSeen = :at"),
		ConditionExpression:       aws.String("attribute_not_exists(lastSeen) OR lastSeen < :at"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":at": n(e.At), ":c": s(e.ConnectionID)},
	})
	return err
}

// ExpireGrace ends the grace period that began at since: if the user's live set is still
// empty, the user is still announced online and no later period began, the announced
// state becomes offline and the UserOffline event is returned (ok true). A retry after
// that (same since) returns the same event again; otherwise ok is false. The offline-grace
// state machine performs the same conditional update.
func (st *Store) ExpireGrace(ctx context.Context, userID string, since time.Time) (events.UserOffline, bool, error) {
	user, ok, err := st.updateIf(ctx, "expire grace of "+userID, &dynamodb.UpdateItemInput{
		Key:                       userKey(userID),
		UpdateExpression:          aws.String("SET announced = :offline"),
		ConditionExpression:       aws.String("attribute_not_exists(live) AND announced = :online AND offlineSince = :since"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":offline": s("offline"), ":online": s("online"), ":since": n(since)},
		ReturnValues:              types.ReturnValueAllNew,
	})
	if err != nil {
		return events.UserOffline{}, false, err
	}
	if !ok {
		if user, err = st.user(ctx, userID); err != nil {
			return events.UserOffline{}, false, err
		}
		if str(user, "announced") != "offline" || !tm(user, "offlineSince").Equal(since.UTC()) {
			return events.UserOffline{}, false, nil
		}
	}
	return events.NewUserOffline(userID, since, tm(user, "lastActivity")), true, nil
}

// StaleConnection is a live connection not seen since LastSeen.
type StaleConnection struct {
	UserID, ConnectionID string
	LastSeen             time.Time
}

// StaleConnections lists live connections whose last open or activity is before cutoff
// (a scan: run it from the scheduled sweeper, not per request).
func (st *Store) StaleConnections(ctx context.Context, cutoff time.Time) ([]StaleConnection, error) {
	var out []StaleConnection
	var start map[string]types.AttributeValue
	for {
		page, err := st.db.Scan(ctx, &dynamodb.ScanInput{
			TableName:                 aws.String(st.tables.View),
			FilterExpression:          aws.String("begins_with(sk, :conn) AND attribute_exists(openedAt) AND attribute_not_exists(closedAt) AND lastSeen < :cut"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":conn": s(connPrefix), ":cut": n(cutoff)},
			ExclusiveStartKey:         start,
		})
		if err != nil {
			return nil, awsfail.Wrap("scan for stale connections", err)
		}
		for _, item := range page.Items {
			out = append(out, StaleConnection{UserID: str(item, "pk"), ConnectionID: str(item, "connectionId"), LastSeen: tm(item, "lastSeen")})
		}
		if page.LastEvaluatedKey == nil {
			return out, nil
		}
		start = page.LastEvaluatedKey
	}
}

// PruneTombstones forgets connections closed before cutoff: their connection item and
// their entry in the user's closed set. It returns how many it forgot.
func (st *Store) PruneTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	pruned := 0
	var start map[string]types.AttributeValue
	for {
		page, err := st.db.Scan(ctx, &dynamodb.ScanInput{
			TableName:                 aws.String(st.tables.View),
			FilterExpression:          aws.String("begins_with(sk, :conn) AND closedAt < :cut"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":conn": s(connPrefix), ":cut": n(cutoff)},
			ExclusiveStartKey:         start,
		})
		if err != nil {
			return pruned, awsfail.Wrap("scan for tombstones", err)
		}
		for _, item := range page.Items {
			uid, cid := str(item, "pk"), str(item, "connectionId")
			if _, err := st.update(ctx, "forget "+cid, &dynamodb.UpdateItemInput{
				Key:                       userKey(uid),
				UpdateExpression:          aws.String("DELETE closed :cs"),
				ExpressionAttributeValues: map[string]types.AttributeValue{":cs": ss(cid)},
			}); err != nil {
				return pruned, err
			}
			if _, err := st.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(st.tables.View), Key: connKey(uid, cid)}); err != nil {
				return pruned, awsfail.Wrap("delete tombstone "+cid, err)
			}
			pruned++
		}
		if page.LastEvaluatedKey == nil {
			return pruned, nil
		}
		start = page.LastEvaluatedKey
	}
}

// CreateTables creates the two tables (for tests and local emulators; the deploy template
// creates them on AWS) and waits until they are active.
func CreateTables(ctx context.Context, db *dynamodb.Client, t Tables) error {
	str := types.ScalarAttributeTypeS
	_, err := db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            aws.String(t.Events),
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: str}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash}},
		BillingMode:          types.BillingModePayPerRequest,
		StreamSpecification:  &types.StreamSpecification{StreamEnabled: aws.Bool(true), StreamViewType: types.StreamViewTypeNewImage},
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", t.Events, err)
	}
	_, err = db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(t.View),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String("pk"), AttributeType: str},
			{AttributeName: aws.String("sk"), AttributeType: str},
			{AttributeName: aws.String("online"), AttributeType: str},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String("sk"), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{{
			IndexName: aws.String(OnlineIndex),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String("online"), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String("pk"), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeInclude,
				NonKeyAttributes: []string{"live", "lastActivity"}},
		}},
		BillingMode: types.BillingModePayPerRequest,
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", t.View, err)
	}
	for _, name := range []string{t.Events, t.View} {
		if err := dynamodb.NewTableExistsWaiter(db).Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)}, time.Minute); err != nil {
			return fmt.Errorf("wait for %s: %w", name, err)
		}
	}
	return nil
}
