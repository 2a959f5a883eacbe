// Package awsfail maps errors of the AWS SDK to the sentinels of package failure, for every
// AWS adapter: throttling codes to failure.ErrThrottled, conditional-check failures to
// failure.ErrConflict, server errors and transport failures to failure.ErrUnavailable.
package awsfail

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	"github.com/wspresence/wspresence/internal/failure"
)

var throttleCodes = map[string]bool{
	"ThrottlingException":                    true,
	"Throttling":                             true,
	"ThrottledException":                     true,
	"TooManyRequestsException":               true,
	"ProvisionedThroughputExceededException": true,
	"RequestLimitExceeded":                   true,
	"LimitExceededException":                 true,
	"RequestThrottledException":              true,
}

// Code returns the service error code of err ("" if it has none).
func Code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// Status returns the HTTP status of the response that caused err (0 if none).
func Status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// Wrap describes a failed call op and wraps the sentinel its error maps to, if any.
func Wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	code, status := Code(err), Status(err)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	case code == "ConditionalCheckFailedException":
		return fmt.Errorf("%s: %w: %w", op, failure.ErrConflict, err)
	case throttleCodes[code] || status == http.StatusTooManyRequests:
		return fmt.Errorf("%s: %w: %w", op, failure.ErrThrottled, err)
	case status >= 500 || (status == 0 && code == ""):
		return fmt.Errorf("%s: %w: %w", op, failure.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
