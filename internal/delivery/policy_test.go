package delivery_test

import (
	"reflect"
	"testing"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
)

func TestPlan(t *testing.T) {
	one := delivery.Plan(events.Message{UserID: "a", Body: "x"}, "sqs-id")
	if !reflect.DeepEqual(one, []delivery.Task{{MessageID: "sqs-id", UserID: "a", Body: "x"}}) {
		t.Fatalf("one user: %+v", one)
	}
	many := delivery.Plan(events.Message{MessageID: "m", UserIDs: []string{"b", "a", "b"}, Body: "y"}, "ignored")
	if !reflect.DeepEqual(many, []delivery.Task{{MessageID: "m", UserID: "b", Body: "y"}, {MessageID: "m", UserID: "a", Body: "y"}}) {
		t.Fatalf("several users: %+v", many)
	}
}

func TestLastAttempt(t *testing.T) {
	for _, c := range []struct {
		attempt, max int
		last         bool
	}{{1, 3, false}, {2, 3, false}, {3, 3, true}, {4, 3, true}, {9, 0, false}} {
		if got := delivery.LastAttempt(c.attempt, c.max); got != c.last {
			t.Errorf("LastAttempt(%d, %d) = %v", c.attempt, c.max, got)
		}
	}
}
