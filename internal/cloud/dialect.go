package cloud

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// dialect is the protocol-specific part of the server side.
type dialect interface {
	// filters receive every request and every confirmation of the application's endpoints.
	filters(app, ext string) []string
	// request recognises an agent's request for the latest configuration: the endpoint's key
	// (token, or token.name for a named configuration) and where the answer goes.
	request(rest []string, payload []byte) (key string, reqID uint64, ok bool, err error)
	// push builds a configuration message for an endpoint; reqID > 0 answers that request.
	push(prefix string, id cmx.ID, body []byte, reqID uint64) (topic string, payload []byte, err error)
	// confirmation recognises an answer from the agent.
	confirmation(rest []string, payload []byte) (c Confirmation, ok bool, err error)
	// statusTopic is where the answer to a push at topic arrives.
	statusTopic(pushTopic string) string
}

// Confirmation is an agent's answer to a push.
type Confirmation struct {
	Token  string
	ID     cmx.ID
	Status string
}

// OK reports whether the configuration was applied.
func (c Confirmation) OK() bool { return c.Status == cmx.StatusOK }

func (c Confirmation) String() string {
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
		// TODO(cmp7): implement with the 7/CMP functions of package cmx once they exist (topics
		// P/config/json[/<name>]/<rid>, answers at .../status, applied reports at P/applied/json).
		return nil, fmt.Errorf("dialect cmp7 is not supported by cmxctl yet")
	}
	return nil, fmt.Errorf("unknown dialect %q (cmx3 or cmp7)", name)
}

type cmx3 struct{}

func (cmx3) filters(app, ext string) []string {
	p := "kp1/" + app + "/" + ext + "/+"
	return []string{p + "/pull/json", p + "/json/status", p + "/json/+/status"}
}

func (cmx3) request(rest []string, payload []byte) (string, uint64, bool, error) {
	if len(rest) != 2 || rest[0] != "pull" || rest[1] != "json" {
		return "", 0, false, nil
	}
	id, err := cmx.ParsePullRequest(payload)
	return "", id, true, err
}

func (cmx3) push(prefix string, id cmx.ID, body []byte, reqID uint64) (string, []byte, error) {
	if !json.Valid(body) {
		return "", nil, fmt.Errorf("not JSON")
	}
	var probe []json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return "", nil, fmt.Errorf("3/CMX entries must be a JSON array")
	}
	payload := []byte(`{"entries":` + string(body) + `}`)
	if !id.IsZero() {
		payload = []byte(`{"id":` + string(id.JSON()) + `,"entries":` + string(body) + `}`)
	}
	return cmx.PushTopic(prefix, reqID), payload, nil
}

func (cmx3) confirmation(rest []string, payload []byte) (Confirmation, bool, error) {
	isStatus := len(rest) == 2 && rest[0] == "json" && rest[1] == "status" ||
		len(rest) == 3 && rest[0] == "json" && cmx.IsRequestID(rest[1]) && rest[2] == "status"
	if !isStatus {
		return Confirmation{}, false, nil
	}
	id, status, err := cmx.ParseConfirmation(payload)
	return Confirmation{ID: id, Status: status}, true, err
}

func (cmx3) statusTopic(pushTopic string) string { return cmx.StatusTopic(pushTopic) }

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
