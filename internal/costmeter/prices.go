// Package costmeter counts what AWS would bill for traffic driven through the AWS
// runtime's real handlers against the test peers (dynalite, fakes of EventBridge, SQS and
// the API Gateway Management API): Lambda invocations and their measured durations (arm64
// prices, 1 ms granularity, at the median measured), DynamoDB capacity as the table
// reports it (ReturnConsumedCapacity) plus the index writes the items' changes cause and
// the storage of what a table retains, stream-triggered invocations after event
// filtering, EventBridge entries, SQS requests, CloudWatch Logs ingested at the functions'
// log levels and their storage. Every batched invocation is counted twice: as the
// mappings form batches under load (full) and with one record each (sparse). It prices
// them with one table of list prices (Prices) beside the API Gateway floor of the same
// traffic. The scenarios live in its test (make cost).
package costmeter

// PriceTable holds AWS list prices in dollars per unit.
type PriceTable struct {
	// Date and Region say when and where the prices were read.
	Date, Region string
	// API Gateway WebSocket: per message (frames in and posts out, per 32 KB) and per
	// connection-minute.
	APIGatewayMessage, APIGatewayConnectionMinute float64
	// Lambda (arm64): per request and per GB-second of billed duration (1 ms granularity).
	LambdaRequest, LambdaGBSecond float64
	// DynamoDB on-demand: per write request unit (1 KB) and read request unit (4 KB
	// strongly consistent, or two eventually consistent reads).
	DynamoWRU, DynamoRRU float64
	// SQS standard: per request (64 KB chunks).
	SQSRequest float64
	// EventBridge: per custom event entry (64 KB chunks).
	EventBridgeEvent float64
	// Step Functions Express: per execution and per GB-second (64 MB minimum, 100 ms
	// granularity).
	ExpressExecution, ExpressGBSecond float64
	// DynamoDB storage and point-in-time recovery, per GB-month.
	DynamoStorageGBMonth, DynamoPITRGBMonth float64
	// CloudWatch Logs: per GB ingested and per GB-month stored.
	LogsIngestGB, LogsStoreGBMonth float64
	// CloudWatch: per custom metric-month and per standard alarm-month.
	MetricMonth, AlarmMonth float64
	// API Gateway Management API calls other than posts (GetConnection): the pricing page
	// bills WebSocket messages and connection minutes; a management call is taken as
	// neither (set it to APIGatewayMessage to price it as a message).
	APIGatewayManagementCall float64
}

// HoursPerMonth is the month the monthly figures use (730 hours).
const HoursPerMonth = 730

// Prices are the list prices used everywhere (us-east-1, on-demand; free tiers ignored).
var Prices = PriceTable{
	Date:                       "2026-11",
	Region:                     "us-east-1",
	APIGatewayMessage:          1.00 / 1e6,
	APIGatewayConnectionMinute: 0.25 / 1e6,
	LambdaRequest:              0.20 / 1e6,
	LambdaGBSecond:             0.0000133334,
	DynamoWRU:                  0.625 / 1e6,
	DynamoRRU:                  0.125 / 1e6,
	SQSRequest:                 0.40 / 1e6,
	EventBridgeEvent:           1.00 / 1e6,
	ExpressExecution:           1.00 / 1e6,
	ExpressGBSecond:            0.00001667,
	DynamoStorageGBMonth:       0.25,
	DynamoPITRGBMonth:          0.20,
	LogsIngestGB:               0.50,
	LogsStoreGBMonth:           0.03,
	MetricMonth:                0.30,
	AlarmMonth:                 0.10,
	APIGatewayManagementCall:   0,
}
