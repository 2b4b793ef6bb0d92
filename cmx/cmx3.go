package cmx

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// Resource and status names of the seed dialect 3/CMX.
const (
	// StatusOK is the status of a push that was applied.
	StatusOK = "ok"
)

// Limits bound what a push may contain. They are checked before (size) and during parsing, so a
// hostile payload costs at most one bounded scan.
type Limits struct {
	MaxPayload int // bytes of the whole MQTT payload
	MaxDepth   int // nesting of arrays and objects, the payload's own object counted
	MaxIDLen   int // bytes of the id as JSON text
	MaxEntries int // elements of entries
}

// DefaultLimits returns the limits used when the configuration sets only max_payload.
func DefaultLimits(maxPayload int) Limits {
	return Limits{MaxPayload: maxPayload, MaxDepth: 64, MaxIDLen: 256, MaxEntries: 100000}
}

// ID is a push id as it was received: a JSON string or number, or none. Ids are typed: the number 42
// and the string "42" are different ids.
type ID struct {
	raw string // canonical JSON text; "" means no id
}

// IDFromKey returns the ID whose Key is key.
func IDFromKey(key string) ID { return ID{raw: key} }

// IsZero reports whether the push had no id.
func (id ID) IsZero() bool { return id.raw == "" }

// Key is the id's canonical JSON text, usable as a map or database key that keeps the type.
func (id ID) Key() string { return id.raw }

// Text is the id as a person or a hook reads it: a string without quotes, a number as written, ""
// when there is none.
func (id ID) Text() string {
	if id.raw == "" || id.raw[0] != '"' {
		return id.raw
	}
	var s string
	if err := json.Unmarshal([]byte(id.raw), &s); err != nil {
		return id.raw
	}
	return s
}

// JSON returns the id as JSON, nil when there is none.
func (id ID) JSON() json.RawMessage {
	if id.raw == "" {
		return nil
	}
	return json.RawMessage(id.raw)
}

// Push is a well-formed 3/CMX configuration push.
type Push struct {
	ID      ID
	Entries []byte // the entries array exactly as received
}

// InputError is a push that cannot be applied. Status is what the confirmation carries.
type InputError struct {
	ID     ID // the push's id when it could be read
	Reason string
}

func (e *InputError) Error() string { return e.Status() }

// Status is the confirmation status for the bad push.
func (e *InputError) Status() string { return "invalid payload: " + e.Reason }

// ParsePush parses and checks a 3/CMX push payload. Any problem is returned as an *InputError that
// names it. The push's Entries are a slice of payload, not a copy: payload must not change while
// the push is in use.
func ParsePush(payload []byte, lim Limits) (Push, error) {
	if lim.MaxPayload > 0 && len(payload) > lim.MaxPayload {
		return Push{}, TooLarge(payload[:min(len(payload), HeadLen)], len(payload), "id", lim)
	}
	// Unbalanced brackets are never JSON; the decoder below then names the exact syntax error, which
	// says more in the status than a bare "not JSON".
	if depth, balanced := nestingDepth(payload); balanced && lim.MaxDepth > 0 && depth > lim.MaxDepth {
		return Push{}, &InputError{Reason: fmt.Sprintf("nesting deeper than %d levels", lim.MaxDepth)}
	}
	fields, err := splitObject(payload)
	if err != nil {
		if isJSONSyntax(payload) {
			return Push{}, &InputError{Reason: "payload must be a JSON object, got " + jsonKind(bytes.TrimSpace(payload))}
		}
		return Push{}, &InputError{Reason: "not JSON: " + err.Error()}
	}
	if fields == nil {
		return Push{}, &InputError{Reason: "payload must be a JSON object, got null"}
	}
	var p Push
	if raw, ok := fields["id"]; ok {
		id, err := parseID(raw, lim)
		if err != nil {
			return Push{}, &InputError{Reason: err.Error()}
		}
		p.ID = id
	}
	entries, ok := fields["entries"]
	if !ok {
		return Push{}, &InputError{ID: p.ID, Reason: "entries missing"}
	}
	if kind := jsonKind(entries); kind != "array" {
		return Push{}, &InputError{ID: p.ID, Reason: "entries must be an array, got " + kind}
	}
	if lim.MaxEntries > 0 {
		if n := arrayLen(entries); n > lim.MaxEntries {
			return Push{}, &InputError{ID: p.ID, Reason: fmt.Sprintf("too many entries: %d, limit %d", n, lim.MaxEntries)}
		}
	}
	p.Entries = entries
	return p, nil
}

// borrowed is a JSON value kept as a slice of the payload it was decoded from: json.RawMessage
// copies it, and for a configuration of several MiB that copy is the largest allocation of a
// push. The payload must not change while a value is in use; the agent never changes a received
// payload, and the offer it becomes keeps the payload alive as long as it needs it.
type borrowed []byte

func (b *borrowed) UnmarshalJSON(data []byte) error {
	*b = data // a slice of the input to json.Unmarshal (the payload), not of a buffer of its own
	return nil
}

// splitObject splits a JSON object into its fields without copying them; nil for "null".
func splitObject(payload []byte) (map[string]json.RawMessage, error) {
	var fields map[string]borrowed
	if err := json.Unmarshal(payload, &fields); err != nil {
		return nil, err
	}
	if fields == nil {
		return nil, nil
	}
	out := make(map[string]json.RawMessage, len(fields))
	for k, v := range fields {
		out[k] = json.RawMessage(v)
	}
	return out, nil
}

func parseID(raw json.RawMessage, lim Limits) (ID, error) {
	switch kind := jsonKind(raw); kind {
	case "string":
		// A decoder replaces invalid UTF-8 and unpaired surrogates by U+FFFD, which would make
		// different ids one key (the later push skipped as already handled) and send back an id the
		// server never sent.
		if !exactString(raw) {
			return ID{}, fmt.Errorf("id is not valid Unicode text")
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return ID{}, fmt.Errorf("id: %w", err)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			return ID{}, fmt.Errorf("id: %w", err)
		}
		canon := bytes.TrimRight(buf.Bytes(), "\n")
		if lim.MaxIDLen > 0 && len(canon) > lim.MaxIDLen {
			return ID{}, fmt.Errorf("id longer than %d bytes", lim.MaxIDLen)
		}
		return ID{raw: string(canon)}, nil
	case "number":
		if lim.MaxIDLen > 0 && len(raw) > lim.MaxIDLen {
			return ID{}, fmt.Errorf("id longer than %d bytes", lim.MaxIDLen)
		}
		return ID{raw: string(raw)}, nil
	default:
		return ID{}, fmt.Errorf("id must be a string or a number, got %s", kind)
	}
}

// Confirmation returns the 3/CMX delivery confirmation {"id", "status"}; id is left out when the push
// had none.
func Confirmation(id ID, status string) []byte {
	// No HTML escaping: the id goes back in the canonical form ParsePush made of it, and statuses
	// quoting hook output stay readable to whoever watches the topic.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(struct {
		ID     json.RawMessage `json:"id,omitempty"`
		Status string          `json:"status"`
	}{id.JSON(), status}); err != nil {
		return nil // only an ID built by IDFromKey from text that is not JSON gets here
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// ParseConfirmation reads a confirmation (the server side of the exchange, used by cmxctl and tests).
func ParseConfirmation(payload []byte) (ID, string, error) {
	var c struct {
		ID     json.RawMessage `json:"id"`
		Status *string         `json:"status"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return ID{}, "", fmt.Errorf("confirmation: %w", err)
	}
	if c.Status == nil {
		return ID{}, "", fmt.Errorf("confirmation: status missing")
	}
	var id ID
	if len(c.ID) > 0 {
		var err error
		if id, err = parseID(c.ID, Limits{}); err != nil {
			return ID{}, "", fmt.Errorf("confirmation: %w", err)
		}
	}
	return id, *c.Status, nil
}

// Superseded is the status of a push that was replaced by a newer one before it was applied.
func Superseded(newer ID) string {
	if newer.IsZero() {
		return "superseded by a newer push"
	}
	if t := newer.Text(); t != "" {
		return "superseded by " + t
	}
	return "superseded by " + newer.Key() // the empty string id, shown as ""
}

// PushTopic is the topic the server pushes to: P/json, or P/json/<requestID> when requestID > 0.
func PushTopic(prefix string, requestID uint64) string {
	if requestID == 0 {
		return prefix + "/json"
	}
	return prefix + "/json/" + strconv.FormatUint(requestID, 10)
}

// PushFilters are the subscriptions that receive every push to an endpoint. The second also matches
// the agent's own P/json/status confirmations, which IsPush tells apart.
func PushFilters(prefix string) []string {
	return []string{prefix + "/json", prefix + "/json/+"}
}

// IsPush reports whether the resource levels after the token name a push: json or json/<request id>.
// The agent's own confirmations (json/status, json/<id>/status) are not pushes.
func IsPush(rest []string) bool {
	switch len(rest) {
	case 1:
		return rest[0] == "json"
	case 2:
		return rest[0] == "json" && IsRequestID(rest[1])
	}
	return false
}

// StatusTopic is where the confirmation of a push received at pushTopic goes.
func StatusTopic(pushTopic string) string { return pushTopic + "/status" }

// PullTopic is where the agent asks for the latest configuration (UC1, UC2).
func PullTopic(prefix string) string { return prefix + "/pull/json" }

// PullRequest is the payload of a pull with the agent's own message id.
func PullRequest(id uint64) []byte {
	return []byte(`{"id":` + strconv.FormatUint(id, 10) + `}`)
}

// ParsePullRequest reads a pull request (the server side, used by cmxctl and tests).
func ParsePullRequest(payload []byte) (uint64, error) {
	var r struct {
		ID *uint64 `json:"id"`
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return 0, fmt.Errorf("pull request: %w", err)
	}
	if r.ID == nil || *r.ID == 0 {
		return 0, fmt.Errorf("pull request: id must be a positive integer")
	}
	return *r.ID, nil
}

// HeadLen is how much of a payload over the limit is looked at for its id.
const HeadLen = 4096

// TooLarge is the refusal of a payload of size bytes, over the limit, of which only head, its
// beginning, was kept. The id is taken from head when its top-level key (idKey: "id" in 3/CMX,
// "configId" in 7/CMP) comes before the cut, so the refusal can name the configuration it refuses.
func TooLarge(head []byte, size int, idKey string, lim Limits) *InputError {
	return &InputError{
		ID:     peekID(head, idKey, lim),
		Reason: fmt.Sprintf("payload too large: %d bytes, limit %d", size, lim.MaxPayload),
	}
}

// peekID reads the value of the top-level key idKey from the start of a JSON object that may be cut
// anywhere. It returns the zero ID when the key is not found before the cut or its value is not a
// valid id.
func peekID(head []byte, idKey string, lim Limits) ID {
	dec := json.NewDecoder(bytes.NewReader(head))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ID{}
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return ID{}
		}
		key, _ := k.(string)
		start := dec.InputOffset()
		v, err := dec.Token()
		if err != nil {
			return ID{}
		}
		if key == idKey {
			switch v.(type) {
			case string, json.Number:
				raw := bytes.TrimLeft(head[start:dec.InputOffset()], " \t\r\n:")
				id, err := parseID(raw, lim)
				if err != nil {
					return ID{}
				}
				return id
			}
			return ID{}
		}
		if d, ok := v.(json.Delim); ok && (d == '{' || d == '[') {
			for depth := 1; depth > 0; {
				t, err := dec.Token()
				if err != nil {
					return ID{}
				}
				if d, ok := t.(json.Delim); ok {
					if d == '{' || d == '[' {
						depth++
					} else {
						depth--
					}
				}
			}
		}
	}
	return ID{}
}
