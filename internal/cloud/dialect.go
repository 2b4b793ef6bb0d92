package cloud

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// Target is the configuration a push or a file addresses: an endpoint token and, in cmp7, a
// configuration name ("" = the endpoint's default configuration).
type Target struct {
	Token string
	Name  string
}

// String is the target as the agent's status shows it: token, or token/name.
func (t Target) String() string { return config.Endpoint{Token: t.Token, Name: t.Name}.Key() }

// file is the base name of the target's file in the configurations folder, without .json.
func (t Target) file() string {
	if t.Name == "" {
		return t.Token
	}
	return t.Token + "." + t.Name
}

// request is an agent's request for the latest configuration, as a server reads it.
type request struct {
	target Target
	topic  string // where the request came in
	reqID  uint64 // cmx3: the pull id the push answers
	// cmp7: the configId the endpoint has applied, when it named one, and whether it observes.
	has     string
	hasID   bool
	observe bool
}

// dialect is the protocol-specific part of the server side.
type dialect interface {
	// filters receive every request and every confirmation of the application's endpoints.
	filters(app, ext string) []string
	// request recognises an agent's request for the latest configuration; ok false means the message
	// is something else (a confirmation, the server's own answer).
	request(t cmx.Topic, topic string, payload []byte) (r request, ok bool, err error)
	// refuse builds the answer to a malformed request at topic; ok false means none is sent.
	refuse(topic string, err error) (to string, payload []byte, ok bool)
	// answer builds the answer to r with the folder's configuration (id, body); found false means
	// the folder has none for the endpoint. ok false means nothing is sent.
	answer(r request, found bool, id cmx.ID, body []byte) (to string, payload []byte, ok bool, err error)
	// push builds an unsolicited configuration message; reqID > 0 gives it a request id topic of
	// its own (cmx3), observer is the latest request topic of an observing endpoint, "" when none
	// is known (cmp7).
	push(prefix string, tg Target, id cmx.ID, body []byte, reqID uint64, observer string) (to string, payload []byte, err error)
	// confirmation recognises an answer from the agent.
	confirmation(t cmx.Topic, payload []byte) (c Confirmation, ok bool, err error)
	// answerFilter is the subscription that receives the answer to a push at pushTopic.
	answerFilter(prefix string, tg Target, pushTopic string) string
	// answers reports whether c answers the push of id to tg.
	answers(c Confirmation, tg Target, id cmx.ID) bool
	// target maps a file's base name (without .json) to the configuration it holds.
	target(base string) (Target, bool)
}

// Confirmation is an agent's answer to a push: a 3/CMX confirmation or a 7/CMP applied report.
type Confirmation struct {
	Token string
	Name  string // cmp7: the named configuration; "" = the default one
	ID    cmx.ID // cmx3: the push id; cmp7: the configId (a string)
	// Status is "ok" when the configuration was applied, otherwise what went wrong (cmp7: the
	// reasonPhrase, or the statusCode when there is none).
	Status string
	Code   int // cmp7: the statusCode; 0 in cmx3
}

// OK reports whether the configuration was applied.
func (c Confirmation) OK() bool { return c.Status == cmx.StatusOK }

func (c Confirmation) String() string {
	if c.Code != 0 {
		s := fmt.Sprintf("applied %s configId=%q statusCode=%d", Target{c.Token, c.Name}, c.ID.Text(), c.Code)
		if !c.OK() {
			s += fmt.Sprintf(" reason=%q", c.Status)
		}
		return s
	}
	id := "(no id)"
	if !c.ID.IsZero() {
		id = string(c.ID.JSON())
	}
	return fmt.Sprintf("confirmation %s id=%s status=%q", c.Token, id, c.Status)
}

func newDialect(name string) (dialect, error) {
	switch name {
	case config.DialectCMX3:
		return cmx3{}, nil
	case config.DialectCMP7:
		return cmp7{}, nil
	}
	return nil, inputError("unknown dialect %q (cmx3 or cmp7)", name)
}

type cmx3 struct{}

func (cmx3) filters(app, ext string) []string {
	p := "kp1/" + app + "/" + ext + "/+"
	return []string{p + "/pull/json", p + "/json/status", p + "/json/+/status"}
}

func (cmx3) request(t cmx.Topic, topic string, payload []byte) (request, bool, error) {
	rest := t.Rest
	if len(rest) != 2 || rest[0] != "pull" || rest[1] != "json" {
		return request{}, false, nil
	}
	id, err := cmx.ParsePullRequest(payload)
	return request{target: Target{Token: t.Token}, topic: topic, reqID: id}, true, err
}

// refuse sends nothing: 3/CMX has no error answer to a pull.
func (cmx3) refuse(string, error) (string, []byte, bool) { return "", nil, false }

// answer sends nothing for an endpoint without a file: 3/CMX cannot say "none".
func (d cmx3) answer(r request, found bool, id cmx.ID, body []byte) (string, []byte, bool, error) {
	if !found {
		return "", nil, false, nil
	}
	prefix := strings.TrimSuffix(r.topic, "/pull/json")
	to, payload, err := d.push(prefix, r.target, id, body, r.reqID, "")
	return to, payload, err == nil, err
}

func (cmx3) push(prefix string, _ Target, id cmx.ID, body []byte, reqID uint64, _ string) (string, []byte, error) {
	if err := notJSON(body); err != nil {
		return "", nil, err
	}
	var probe []json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return "", nil, &InputError{Err: &BodyError{Problem: "is not a JSON array (3/CMX entries are one)"}}
	}
	payload := []byte(`{"entries":` + string(body) + `}`)
	if !id.IsZero() {
		payload = []byte(`{"id":` + string(id.JSON()) + `,"entries":` + string(body) + `}`)
	}
	return cmx.PushTopic(prefix, reqID), payload, nil
}

func (cmx3) confirmation(t cmx.Topic, payload []byte) (Confirmation, bool, error) {
	rest := t.Rest
	isStatus := len(rest) == 2 && rest[0] == "json" && rest[1] == "status" ||
		len(rest) == 3 && rest[0] == "json" && cmx.IsRequestID(rest[1]) && rest[2] == "status"
	if !isStatus {
		return Confirmation{}, false, nil
	}
	id, status, err := cmx.ParseConfirmation(payload)
	return Confirmation{Token: t.Token, ID: id, Status: status}, true, err
}

func (cmx3) answerFilter(_ string, _ Target, pushTopic string) string {
	return cmx.StatusTopic(pushTopic)
}

func (cmx3) answers(c Confirmation, _ Target, id cmx.ID) bool { return c.ID.Key() == id.Key() }

func (cmx3) target(base string) (Target, bool) {
	if base == "" || strings.HasPrefix(base, ".") || !cmx.ValidLevel(base) {
		return Target{}, false
	}
	return Target{Token: base}, true
}

// cmp7 is Kaa 1.x's 7/CMP: the agent requests and observes P/config/json[/<name>], the server
// answers at the request's /status topic and sends later changes there too, and the agent reports
// the outcome at P/applied/json[/<name>].
type cmp7 struct{}

func (cmp7) filters(app, ext string) []string {
	p := "kp1/" + app + "/" + ext + "/+"
	// config/json/# also brings the server's own answers; request tells them apart.
	return []string{p + "/config/json/#", p + "/applied/json/#"}
}

func (cmp7) request(t cmx.Topic, topic string, payload []byte) (request, bool, error) {
	route := cmx.ParseConfigTopic(t.Rest)
	if route.Kind != cmx.TopicRequest {
		return request{}, false, nil
	}
	r := request{target: Target{Token: t.Token, Name: route.Name}, topic: topic}
	req, err := cmx.ParseConfigRequest(payload)
	if err != nil {
		return r, true, err
	}
	r.has, r.hasID, r.observe = req.ConfigID, req.HasConfigID, req.Observe
	return r, true, nil
}

func (cmp7) refuse(topic string, err error) (string, []byte, bool) {
	return cmx.ErrorTopic(topic), cmx.ConfigErrorPayload(400, err.Error()), true
}

func (cmp7) answer(r request, found bool, id cmx.ID, body []byte) (string, []byte, bool, error) {
	to := cmx.StatusTopic(r.topic)
	switch {
	case !found:
		return to, cmx.NoneAssignedResponse(), true, nil
	case r.hasID && r.has == id.Text():
		return to, cmx.UnchangedResponse(), true, nil
	}
	payload, err := cmx.ConfigResponse(id.Text(), body)
	if err != nil {
		return cmx.ErrorTopic(r.topic), cmx.ConfigErrorPayload(500, "the server's configuration file is not JSON"), true, err
	}
	return to, payload, true, nil
}

// push sends to the observer's response topic, as observe asks; with no observer known (the agent
// asked another server, or before this one started) to the bare status topic, which every
// observing agent also receives.
func (cmp7) push(prefix string, tg Target, id cmx.ID, body []byte, _ uint64, observer string) (string, []byte, error) {
	if id.Text() == "" {
		return "", nil, inputError("7/CMP needs a configId")
	}
	if err := notJSON(body); err != nil {
		return "", nil, err
	}
	payload, err := cmx.ConfigResponse(id.Text(), body)
	if err != nil {
		return "", nil, &InputError{Err: &BodyError{Problem: "cannot be a 7/CMP config: " + err.Error()}}
	}
	if observer != "" {
		return cmx.StatusTopic(observer), payload, nil
	}
	return cmx.StatusTopic(cmx.ConfigRequestTopic(prefix, tg.Name, 0)), payload, nil
}

func (cmp7) confirmation(t cmx.Topic, payload []byte) (Confirmation, bool, error) {
	name, _, ok := cmx.ParseAppliedTopic(t.Rest)
	if !ok {
		return Confirmation{}, false, nil
	}
	a, err := cmx.ParseAppliedReport(payload)
	if err != nil {
		return Confirmation{}, true, err
	}
	c := Confirmation{Token: t.Token, Name: name, ID: configID(a.ConfigID), Code: a.StatusCode, Status: cmx.StatusOK}
	if !a.OK() {
		c.Status = a.ReasonPhrase
		if c.Status == "" {
			c.Status = "statusCode " + strconv.Itoa(a.StatusCode)
		}
	}
	return c, true, nil
}

func (cmp7) answerFilter(prefix string, tg Target, _ string) string {
	return cmx.AppliedTopic(prefix, tg.Name, 0) + "/#"
}

// answers matches by configId text: a configId is always a string, whatever --id looked like.
func (cmp7) answers(c Confirmation, tg Target, id cmx.ID) bool {
	return c.Name == tg.Name && c.ID.Text() == id.Text()
}

// target reads <token>.<name>: names have no dots, so the last dot splits when what follows is a
// valid configuration name; otherwise the whole base name is the token.
func (cmp7) target(base string) (Target, bool) {
	if base == "" || strings.HasPrefix(base, ".") || !cmx.ValidLevel(base) {
		return Target{}, false
	}
	if i := strings.LastIndexByte(base, '.'); i > 0 && cmx.ValidConfigName(base[i+1:]) {
		return Target{Token: base[:i], Name: base[i+1:]}, true
	}
	return Target{Token: base}, true
}

// configID is a configId as an ID: always a JSON string.
func configID(s string) cmx.ID { return cmx.IDFromKey(cmx.ConfigIDKey(s)) }

// ParseID reads an id as a user writes it on the command line: a JSON number stays a number,
// anything else is a string.
func ParseID(s string) (cmx.ID, error) {
	if s == "" {
		return cmx.ID{}, nil
	}
	raw := strconv.Quote(s)
	if json.Valid([]byte(s)) {
		var n json.Number
		if json.Unmarshal([]byte(s), &n) == nil {
			raw = s
		}
	}
	p, err := cmx.ParsePush([]byte(`{"id":`+raw+`,"entries":[]}`), cmx.DefaultLimits(0))
	if err != nil {
		return cmx.ID{}, err
	}
	return p.ID, nil
}
