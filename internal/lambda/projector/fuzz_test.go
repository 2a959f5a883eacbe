package projector_test

import (
	"encoding/json"
	"errors"
	"testing"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambdatest"
)

// FuzzDecode: no stream record panics the decoder; what it accepts is a valid event whose
// key matches the item's.
func FuzzDecode(f *testing.F) {
	var ev lambdaevents.DynamoDBEvent
	lambdatest.Load(f, "dynamodb-stream.json", nil, &ev)
	for _, r := range ev.Records {
		b, _ := json.Marshal(r.Change.NewImage)
		f.Add(b)
	}
	f.Add([]byte(`{"at":{"N":"1"}}`))
	f.Add([]byte(`{"type":{"SS":["a"]},"at":{"S":"2026-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var img map[string]lambdaevents.DynamoDBAttributeValue
		if json.Unmarshal(data, &img) != nil {
			return
		}
		e, err := projector.Decode(img)
		if err != nil {
			if !errors.Is(err, projector.ErrUndecodable) {
				t.Fatalf("error does not wrap ErrUndecodable: %v", err)
			}
			return
		}
		if e.Validate() != nil {
			t.Fatalf("accepted an invalid event %+v", e)
		}
	})
}
