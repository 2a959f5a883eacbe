// Package schemas embeds the JSON Schemas (draft-04, the dialect EventBridge's schema
// registry takes) of every published event, the message other systems enqueue, and the REST
// replies. Tests validate real payloads against them; the deploy template registers the
// event schemas.
package schemas

import "embed"

// FS holds the schema files, named <kind>.json.
//
//go:embed *.json
var FS embed.FS

// Schema file names.
const (
	UserOnline           = "user-online.json"
	UserOffline          = "user-offline.json"
	MessageDelivered     = "message-delivered.json"
	MessageUndeliverable = "message-undeliverable.json"
	Message              = "message.json"
	UserOnlineReply      = "user-online-reply.json"
	UserStatusReply      = "user-status-reply.json"
	EnqueueReply         = "enqueue-reply.json"
	Error                = "error.json"
)

// ForDetailType returns the schema file of a published event's detail-type ("" if none).
func ForDetailType(detailType string) string {
	switch detailType {
	case "UserOnline":
		return UserOnline
	case "UserOffline":
		return UserOffline
	case "MessageDelivered":
		return MessageDelivered
	case "MessageUndeliverable":
		return MessageUndeliverable
	}
	return ""
}
