// Package stepfunctions starts the offline-grace state machine: one execution per offline
// period, named from the user and the time the period began. The machine waits the grace
// period, then invokes the grace function, which decides through the core. A second
// execution of the same period is harmless because that decision is: the grace function's
// conditional write finds the period already ended and changes nothing (Express workflows
// do not de-duplicate names; a Standard workflow's existing execution counts as started).
// A Starter is safe for concurrent use.
package stepfunctions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	"github.com/aws/aws-sdk-go-v2/service/sfn/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// Starter starts executions of one state machine.
type Starter struct {
	client *sfn.Client
	arn    string
	grace  time.Duration
}

// New returns a Starter of the state machine arn with the given grace period.
func New(client *sfn.Client, stateMachineARN string, grace time.Duration) *Starter {
	return &Starter{client: client, arn: stateMachineARN, grace: grace}
}

// Input is the execution input the offline-grace machine reads.
type Input struct {
	UserID string `json:"userId"`
	// OfflineSince is the time the live set became empty, in Unix nanoseconds as the view
	// table stores it (a string, as DynamoDB numbers travel in the state machine).
	OfflineSince string `json:"offlineSince"`
	GraceSeconds int    `json:"graceSeconds"`
}

// ExecutionName is the idempotent name of the execution of userID's period since.
func ExecutionName(userID string, since time.Time) string {
	sum := sha256.Sum256([]byte(userID + "\x00" + strconv.FormatInt(since.UnixNano(), 10)))
	return "offline-" + hex.EncodeToString(sum[:20])
}

// StartGrace starts the execution of userID's offline period that began at since.
func (s *Starter) StartGrace(ctx context.Context, userID string, since time.Time) error {
	in, err := json.Marshal(Input{UserID: userID, OfflineSince: strconv.FormatInt(since.UnixNano(), 10),
		GraceSeconds: int((s.grace + time.Second - 1) / time.Second)})
	if err != nil {
		return err
	}
	_, err = s.client.StartExecution(ctx, &sfn.StartExecutionInput{
		StateMachineArn: aws.String(s.arn),
		Name:            aws.String(ExecutionName(userID, since)),
		Input:           aws.String(string(in)),
	})
	var exists *types.ExecutionAlreadyExists
	if err != nil && !errors.As(err, &exists) {
		return awsfail.Wrap(fmt.Sprintf("start grace of %s", userID), err)
	}
	return nil
}
