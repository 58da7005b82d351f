// Package fanout queues a refresher run's shard runs as asynchronous
// invocations of the refresher itself. It is its own package so that only
// the refresher links the Lambda client.
package fanout

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	lambdatypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
)

// InvokeAPI is the Lambda client as Invoker uses it.
type InvokeAPI interface {
	Invoke(ctx context.Context, in *lambda.InvokeInput, optFns ...func(*lambda.Options)) (*lambda.InvokeOutput, error)
}

// Invoker dispatches shard runs as asynchronous invocations of the
// function itself: Lambda queues them, runs them in parallel up to the
// function's reserved concurrency, and retries a throttled one until the
// function's maximum event age (docs/design.md §5, fan-out).
type Invoker struct {
	API InvokeAPI
	// Function and Qualifier name the function (AWS_LAMBDA_FUNCTION_NAME
	// and, unless $LATEST, AWS_LAMBDA_FUNCTION_VERSION).
	Function, Qualifier string
}

// Dispatch queues one event.
func (s Invoker) Dispatch(ctx context.Context, event []byte) error {
	in := &lambda.InvokeInput{FunctionName: aws.String(s.Function), InvocationType: lambdatypes.InvocationTypeEvent, Payload: event}
	if s.Qualifier != "" && s.Qualifier != "$LATEST" {
		in.Qualifier = aws.String(s.Qualifier)
	}
	if _, err := s.API.Invoke(ctx, in); err != nil {
		return fmt.Errorf("queue shard run on %s: %w", s.Function, err)
	}
	return nil
}
