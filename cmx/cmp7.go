package cmx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// This file is the Kaa 1.x dialect, 7/CMP: a configuration resource P/config/json[/<name>] that the
// endpoint requests (and observes), and an applied resource P/applied/json[/<name>] where it reports
// the result. Both sides are here: the agent's (requests out, responses in, reports out) and the
// server's (requests in, responses out, reports in), which cmxctl and the tests use.
//
// Be lenient in what is accepted (real servers add fields such as id, statusCode and reasonPhrase to
// responses) and strict in what is sent (the agent's payloads hold exactly the fields 7/CMP names).

// StatusApplied is the 7/CMP statusCode of a configuration that was applied.
const StatusApplied = 200

// ValidConfigName reports whether name can name a 7/CMP configuration (see CheckConfigName).
func ValidConfigName(name string) bool { return CheckConfigName(name) == nil }

// CheckConfigName applies 7/CMP's rule for configuration names: ^[a-zA-Z0-9_-]+$, not all digits (it
// would read as a request id) and not status or error (they would read as a response). The error
// completes a sentence that starts with the name.
func CheckConfigName(name string) error {
	if name == "" {
		return errors.New("is empty")
	}
	allDigits := true
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == '-':
			allDigits = false
		default:
			return errors.New("may only hold letters, digits, '_' and '-'")
		}
	}
	switch {
	case allDigits:
		return errors.New("is all digits, which would read as a request id")
	case name == "status" || name == "error":
		return errors.New("is reserved by 7/CMP")
	}
	return nil
}

func resource(prefix, kind, name string) string {
	t := prefix + "/" + kind + "/json"
	if name != "" {
		t += "/" + name
	}
	return t
}

func withRequestID(topic string, requestID uint64) string {
	if requestID == 0 {
		return topic
	}
	return topic + "/" + strconv.FormatUint(requestID, 10)
}

// ConfigRequestTopic is where a configuration is requested: P/config/json[/<name>][/<requestID>];
// requestID 0 leaves the request id out, as Kaa's own clients do.
func ConfigRequestTopic(prefix, name string, requestID uint64) string {
	return withRequestID(resource(prefix, "config", name), requestID)
}

// ConfigFilter is the subscription that receives every response for one configuration. It also
// matches the endpoint's own requests, and for the default configuration the named ones' topics too:
// ParseConfigTopic tells them apart.
func ConfigFilter(prefix, name string) string { return resource(prefix, "config", name) + "/#" }

// ErrorTopic is where an error response to a request published at requestTopic goes. (A success
// goes to StatusTopic(requestTopic).)
func ErrorTopic(requestTopic string) string { return requestTopic + "/error" }

// AppliedTopic is where an applied report goes: P/applied/json[/<name>][/<requestID>].
func AppliedTopic(prefix, name string, requestID uint64) string {
	return withRequestID(resource(prefix, "applied", name), requestID)
}

// TopicKind says what a topic under P/config/json is.
type TopicKind int

// The kinds of configuration topics.
const (
	TopicOther    TopicKind = iota // not a 7/CMP configuration topic
	TopicRequest                   // config/json[/<name>][/<rid>]: a request (the endpoint's own, or another client's)
	TopicResponse                  // config/json[/<name>][/<rid>]/status: a configuration, or {} for unchanged
	TopicError                     // config/json[/<name>][/<rid>]/error: the server refused a request
)

func (k TopicKind) String() string {
	switch k {
	case TopicRequest:
		return "request"
	case TopicResponse:
		return "response"
	case TopicError:
		return "error"
	}
	return "other"
}

// ConfigRoute is a configuration topic taken apart.
type ConfigRoute struct {
	Kind      TopicKind
	Name      string // "" = the default configuration
	RequestID uint64 // 0 = none (an unsolicited response at the bare status topic, or a request without id)
}

// ParseConfigTopic takes apart the resource levels after the token (as SplitTopic returns them).
// Names are never all digits nor status or error, so config/json/<x>/status is unambiguous: a
// request id when x is a positive integer, a name when x is a valid name, something else otherwise.
func ParseConfigTopic(rest []string) ConfigRoute {
	if len(rest) < 2 || rest[0] != "config" || rest[1] != "json" {
		return ConfigRoute{}
	}
	name, rid, tail, ok := nameAndRequestID(rest[2:])
	if !ok {
		return ConfigRoute{}
	}
	r := ConfigRoute{Name: name, RequestID: rid}
	switch {
	case len(tail) == 0:
		r.Kind = TopicRequest
	case len(tail) == 1 && tail[0] == "status":
		r.Kind = TopicResponse
	case len(tail) == 1 && tail[0] == "error":
		r.Kind = TopicError
	default:
		return ConfigRoute{}
	}
	return r
}

// ParseAppliedTopic takes apart applied/json[/<name>][/<rid>] (the server side of applied reports).
func ParseAppliedTopic(rest []string) (name string, requestID uint64, ok bool) {
	if len(rest) < 2 || rest[0] != "applied" || rest[1] != "json" {
		return "", 0, false
	}
	name, rid, tail, ok := nameAndRequestID(rest[2:])
	if !ok || len(tail) != 0 {
		return "", 0, false
	}
	return name, rid, true
}

func nameAndRequestID(levels []string) (name string, rid uint64, tail []string, ok bool) {
	if len(levels) > 0 && ValidConfigName(levels[0]) {
		name, levels = levels[0], levels[1:]
	}
	if len(levels) > 0 && IsRequestID(levels[0]) {
		n, err := strconv.ParseUint(levels[0], 10, 64)
		if err != nil {
			return "", 0, nil, false // more digits than a request id can have
		}
		rid, levels = n, levels[1:]
	}
	return name, rid, levels, true
}

func marshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil // only values holding invalid json.RawMessage get here
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// ConfigRequest is the payload of the endpoint's request: it always observes, and names the applied
// configuration only when one was really applied (a server may take it as an applied report).
func ConfigRequest(appliedID string, applied bool) []byte {
	r := struct {
		Observe  bool    `json:"observe"`
		ConfigID *string `json:"configId,omitempty"`
	}{Observe: true}
	if applied {
		r.ConfigID = &appliedID
	}
	return marshal(r)
}

// Request is a configuration request as a server reads it.
type Request struct {
	ConfigID    string
	HasConfigID bool // the endpoint named the configuration it has applied
	Observe     bool
}

// ParseConfigRequest reads a configuration request (the server side). Fields other than configId and
// observe are ignored.
func ParseConfigRequest(payload []byte) (Request, error) {
	var r struct {
		ConfigID *string `json:"configId"`
		Observe  *bool   `json:"observe"`
	}
	if err := decodeObject(payload, &r); err != nil {
		return Request{}, fmt.Errorf("config request: %w", err)
	}
	var req Request
	if r.ConfigID != nil {
		req.ConfigID, req.HasConfigID = *r.ConfigID, true
	}
	if r.Observe != nil {
		req.Observe = *r.Observe
	}
	return req, nil
}

// decodeObject decodes a JSON object into v; null and other JSON types are errors.
func decodeObject(payload []byte, v any) error {
	if kind := jsonKind(payload); json.Valid(payload) && kind != "object" {
		return fmt.Errorf("want a JSON object, got %s", kind)
	}
	return json.Unmarshal(payload, v)
}

// ResponseKind says what a configuration response means.
type ResponseKind int

// The kinds of configuration responses.
const (
	Unchanged    ResponseKind = iota // {}: the endpoint has the current configuration
	NewConfig                        // a configuration with its id
	NoneAssigned                     // configId "" and config null: the server has none for the endpoint
)

func (k ResponseKind) String() string {
	switch k {
	case Unchanged:
		return "unchanged"
	case NewConfig:
		return "config"
	case NoneAssigned:
		return "none assigned"
	}
	return "unknown"
}

// Response is a well-formed configuration response.
type Response struct {
	Kind     ResponseKind
	ConfigID string // for NewConfig: never empty
	Config   []byte // for NewConfig: the config value exactly as received (any JSON, null included)
}

// ParseConfigResponse parses and checks a configuration response. configId and config come together
// or not at all; other fields are ignored. A problem is returned as an *InputError whose ID, when the
// configId could be read, is the configId as a JSON string (ID.Text is the configId).
func ParseConfigResponse(payload []byte, lim Limits) (Response, error) {
	if lim.MaxPayload > 0 && len(payload) > lim.MaxPayload {
		return Response{}, TooLarge(payload[:min(len(payload), HeadLen)], len(payload), "configId", lim)
	}
	fields, err := objectFields(payload, lim)
	if err != nil {
		return Response{}, err
	}
	rawID, hasID := fields["configId"]
	config, hasConfig := fields["config"]
	var id ID
	if hasID {
		if kind := jsonKind(rawID); kind != "string" {
			return Response{}, &InputError{Reason: "configId must be a string, got " + kind}
		}
		if id, err = parseID(rawID, lim); err != nil {
			return Response{}, &InputError{Reason: strings.Replace(err.Error(), "id", "configId", 1)}
		}
	}
	switch {
	case !hasID && !hasConfig:
		return Response{Kind: Unchanged}, nil
	case !hasConfig:
		return Response{}, &InputError{ID: id, Reason: "config missing (configId and config come together)"}
	case !hasID:
		return Response{}, &InputError{Reason: "configId missing (configId and config come together)"}
	}
	if id.Text() == "" {
		if jsonKind(config) == "null" {
			return Response{Kind: NoneAssigned}, nil
		}
		return Response{}, &InputError{ID: id, Reason: "configId is empty but config is not null"}
	}
	return Response{Kind: NewConfig, ConfigID: id.Text(), Config: config}, nil
}

// objectFields checks size and nesting, then splits a JSON object into its fields.
func objectFields(payload []byte, lim Limits) (map[string]json.RawMessage, error) {
	if lim.MaxPayload > 0 && len(payload) > lim.MaxPayload {
		return nil, &InputError{Reason: fmt.Sprintf("payload too large: %d bytes, limit %d", len(payload), lim.MaxPayload)}
	}
	if depth, balanced := nestingDepth(payload); balanced && lim.MaxDepth > 0 && depth > lim.MaxDepth {
		return nil, &InputError{Reason: fmt.Sprintf("nesting deeper than %d levels", lim.MaxDepth)}
	}
	fields, err := splitObject(payload)
	if err != nil {
		if isJSONSyntax(payload) {
			return nil, &InputError{Reason: "payload must be a JSON object, got " + jsonKind(bytes.TrimSpace(payload))}
		}
		return nil, &InputError{Reason: "not JSON: " + err.Error()}
	}
	if fields == nil {
		return nil, &InputError{Reason: "payload must be a JSON object, got null"}
	}
	return fields, nil
}

// ConfigIDKey is the dedupe key of a configId: the configId as a JSON string, the same typed form as
// a 3/CMX string id (ID.Key), so one store serves both dialects.
func ConfigIDKey(configID string) string {
	return string(marshal(configID))
}

// ConfigIDFromKey returns the configId a ConfigIDKey was made of; ok is false for keys that are not a
// JSON string (a 3/CMX number id, for example).
func ConfigIDFromKey(key string) (configID string, ok bool) {
	if jsonKind([]byte(key)) != "string" {
		return "", false
	}
	if err := json.Unmarshal([]byte(key), &configID); err != nil {
		return "", false
	}
	return configID, true
}

// ConfigResponse builds a response carrying a configuration (the server side). config must be JSON.
func ConfigResponse(configID string, config []byte) ([]byte, error) {
	if !json.Valid(config) {
		return nil, fmt.Errorf("config response: config is not JSON")
	}
	return marshal(struct {
		ConfigID string          `json:"configId"`
		Config   json.RawMessage `json:"config"`
	}{configID, bytes.TrimSpace(config)}), nil
}

// UnchangedResponse is the response that says the endpoint has the current configuration.
func UnchangedResponse() []byte { return []byte(`{}`) }

// NoneAssignedResponse is the response that says the server has no configuration for the endpoint.
func NoneAssignedResponse() []byte { return []byte(`{"configId":"","config":null}`) }

// ErrorResponse is a 1/KP error response: {"statusCode", "reasonPhrase"}.
type ErrorResponse struct {
	StatusCode   int
	ReasonPhrase string
}

func (e ErrorResponse) String() string {
	if e.ReasonPhrase == "" {
		return strconv.Itoa(e.StatusCode)
	}
	return strconv.Itoa(e.StatusCode) + " " + e.ReasonPhrase
}

// maxReason bounds the reasonPhrase kept from a server's error, which ends up in logs and state.
const maxReason = 512

// ParseConfigError reads an error response. Both fields are required by 1/KP; what could be read is
// returned along with the error, so a malformed error response still counts as a refusal. A long
// reasonPhrase is cut to 512 bytes.
func ParseConfigError(payload []byte, lim Limits) (ErrorResponse, error) {
	fields, err := objectFields(payload, lim)
	if err != nil {
		return ErrorResponse{}, err
	}
	var e ErrorResponse
	var problems []string
	if raw, ok := fields["statusCode"]; !ok {
		problems = append(problems, "statusCode missing")
	} else if code, err := strconv.Atoi(string(raw)); err != nil || code < 0 || code > 999 {
		problems = append(problems, "statusCode must be an integer from 0 to 999, got "+clip(string(raw), 32))
	} else {
		e.StatusCode = code
	}
	if raw, ok := fields["reasonPhrase"]; !ok {
		problems = append(problems, "reasonPhrase missing")
	} else if jsonKind(raw) != "string" || json.Unmarshal(raw, &e.ReasonPhrase) != nil {
		problems = append(problems, "reasonPhrase must be a string, got "+jsonKind(raw))
	}
	e.ReasonPhrase = clip(e.ReasonPhrase, maxReason)
	if len(problems) > 0 {
		return e, &InputError{Reason: strings.Join(problems, "; ")}
	}
	return e, nil
}

// clip cuts s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n]
}

// ConfigErrorPayload builds an error response (the server side).
func ConfigErrorPayload(code int, reason string) []byte {
	return marshal(struct {
		StatusCode   int    `json:"statusCode"`
		ReasonPhrase string `json:"reasonPhrase"`
	}{code, reason})
}

// AppliedReport is the payload of an applied report. statusCode is an integer; reasonPhrase is sent
// with every code other than 200 (and only then).
func AppliedReport(configID string, statusCode int, reason string) []byte {
	r := struct {
		ConfigID     string `json:"configId"`
		StatusCode   int    `json:"statusCode"`
		ReasonPhrase string `json:"reasonPhrase,omitempty"`
	}{configID, statusCode, ""}
	if statusCode != StatusApplied {
		r.ReasonPhrase = reason
		if r.ReasonPhrase == "" {
			r.ReasonPhrase = "not applied"
		}
	}
	return marshal(r)
}

// Applied is an applied report as a server reads it.
type Applied struct {
	ConfigID     string
	StatusCode   int // 200 when the report left it out
	ReasonPhrase string
}

// OK reports whether the configuration was applied (a 2xx statusCode).
func (a Applied) OK() bool { return a.StatusCode >= 200 && a.StatusCode < 300 }

// ParseAppliedReport reads an applied report (the server side): configId required, statusCode an
// integer defaulting to 200.
func ParseAppliedReport(payload []byte) (Applied, error) {
	var r struct {
		ConfigID     *string `json:"configId"`
		StatusCode   *int    `json:"statusCode"`
		ReasonPhrase string  `json:"reasonPhrase"`
	}
	if err := decodeObject(payload, &r); err != nil {
		return Applied{}, fmt.Errorf("applied report: %w", err)
	}
	if r.ConfigID == nil {
		return Applied{}, fmt.Errorf("applied report: configId missing")
	}
	a := Applied{ConfigID: *r.ConfigID, StatusCode: StatusApplied, ReasonPhrase: r.ReasonPhrase}
	if r.StatusCode != nil {
		a.StatusCode = *r.StatusCode
	}
	return a, nil
}
