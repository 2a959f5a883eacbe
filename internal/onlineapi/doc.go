// Package onlineapi is the contract of GET /user/online, shared by the local runtime and the
// online Lambda function: parsing and validating the query (userIds, limit, nextToken), the
// opaque pagination token, and the reply elements with the original service's field names.
// Its functions are pure and safe for concurrent use.
package onlineapi
