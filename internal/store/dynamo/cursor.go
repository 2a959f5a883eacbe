package dynamo

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// The reconciler's place in the online list, so each run goes on where the last one
// stopped: pk "#RECONCILER", sk "#CURSOR", after (S) the last user id looked at.
func cursorKey() map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s("#RECONCILER"), "sk": s("#CURSOR")}
}

// Cursor returns the reconciler's place in the online list ("" at its start).
func (st *Store) Cursor(ctx context.Context) (string, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: cursorKey()})
	if err != nil {
		return "", awsfail.Wrap("read the reconciler's cursor", err)
	}
	return str(out.Item, "after"), nil
}

// SetCursor records the reconciler's place in the online list.
func (st *Store) SetCursor(ctx context.Context, after string) error {
	item := cursorKey()
	if after != "" {
		item["after"] = s(after)
	}
	if _, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item}); err != nil {
		return awsfail.Wrap("record the reconciler's cursor", err)
	}
	return nil
}
