package stepfunctions_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sfn"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/grace/stepfunctions"
)

const arn = "arn:aws:states:us-east-1:123456789012:stateMachine:offline-grace"

func TestStartGrace(t *testing.T) {
	calls := 0
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		calls++
		if calls == 2 {
			return awsfake.Error(http.StatusBadRequest, "ExecutionAlreadyExists", "Execution Already Exists")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"executionArn": arn + ":x", "startDate": 1.7e9})
	})
	s := stepfunctions.New(sfn.NewFromConfig(srv.Config()), arn, 5*time.Second)
	since := time.Date(2026, 1, 1, 0, 0, 1, 500, time.UTC)
	for range 2 {
		if err := s.StartGrace(context.Background(), "user-1", since); err != nil {
			t.Fatalf("start (an existing execution counts as started): %v", err)
		}
	}
	reqs := srv.Requests()
	var in struct{ StateMachineArn, Name, Input string }
	reqs[0].Decode(t, &in)
	if reqs[0].Target != "AWSStepFunctions.StartExecution" || in.StateMachineArn != arn || in.Name != stepfunctions.ExecutionName("user-1", since) {
		t.Fatalf("request %s %+v", reqs[0].Target, in)
	}
	var input stepfunctions.Input
	if err := json.Unmarshal([]byte(in.Input), &input); err != nil || input.UserID != "user-1" || input.OfflineSince != "1767225601000000500" ||
		input.GraceSeconds != 5 {
		t.Fatalf("input %s", in.Input)
	}
	var again struct{ Name string }
	reqs[1].Decode(t, &again)
	if again.Name != in.Name {
		t.Fatal("the same period got another execution name")
	}
	if stepfunctions.ExecutionName("user-1", since.Add(time.Nanosecond)) == in.Name || len(in.Name) > 80 {
		t.Fatalf("execution name %q is not per period or too long", in.Name)
	}
}

func TestStartGraceThrottled(t *testing.T) {
	srv := awsfake.New(t, func(awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusBadRequest, "ThrottlingException", "slow down")
	})
	s := stepfunctions.New(sfn.NewFromConfig(srv.Config()), arn, 5*time.Second)
	if err := s.StartGrace(context.Background(), "u", time.Now()); !errors.Is(err, failure.ErrThrottled) {
		t.Fatalf("err = %v, want ErrThrottled", err)
	}
}
