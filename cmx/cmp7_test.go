package cmx

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

const p7 = "kp1/app-v1/cmx/gw-001"

func TestCMP7Topics_AreThe7CMPResources(t *testing.T) {
	tests := []struct{ got, want string }{
		{ConfigRequestTopic(p7, "", 42), p7 + "/config/json/42"},
		{ConfigRequestTopic(p7, "modbus", 42), p7 + "/config/json/modbus/42"},
		{ConfigRequestTopic(p7, "", 0), p7 + "/config/json"},
		{StatusTopic(ConfigRequestTopic(p7, "", 42)), p7 + "/config/json/42/status"},
		{ErrorTopic(ConfigRequestTopic(p7, "modbus", 7)), p7 + "/config/json/modbus/7/error"},
		{ConfigFilter(p7, ""), p7 + "/config/json/#"},
		{ConfigFilter(p7, "modbus"), p7 + "/config/json/modbus/#"},
		{AppliedTopic(p7, "", 43), p7 + "/applied/json/43"},
		{AppliedTopic(p7, "modbus", 43), p7 + "/applied/json/modbus/43"},
		{AppliedTopic(p7, "", 0), p7 + "/applied/json"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("topic = %q, want %q", tt.got, tt.want)
		}
	}
}

func TestValidConfigName(t *testing.T) {
	for name, want := range map[string]bool{
		"modbus": true, "a": true, "A_b-9": true, "007x": true, "-": true, "_1": true, "statuses": true,
		"": false, "42": false, "007": false, "0": false, "status": false, "error": false,
		"a b": false, "a/b": false, "a+": false, "#": false, "ünï": false, "a.b": false,
	} {
		if got := ValidConfigName(name); got != want {
			t.Errorf("ValidConfigName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseConfigTopic_TellsRequestsResponsesAndNamesApart(t *testing.T) {
	tests := []struct {
		rest string
		want ConfigRoute
	}{
		{"config/json/status", ConfigRoute{Kind: TopicResponse}},
		{"config/json/42/status", ConfigRoute{Kind: TopicResponse, RequestID: 42}},
		{"config/json/modbus/status", ConfigRoute{Kind: TopicResponse, Name: "modbus"}},
		{"config/json/modbus/42/status", ConfigRoute{Kind: TopicResponse, Name: "modbus", RequestID: 42}},
		{"config/json/42/error", ConfigRoute{Kind: TopicError, RequestID: 42}},
		{"config/json/modbus/42/error", ConfigRoute{Kind: TopicError, Name: "modbus", RequestID: 42}},
		{"config/json/error", ConfigRoute{Kind: TopicError}},
		{"config/json/modbus/error", ConfigRoute{Kind: TopicError, Name: "modbus"}},
		// The agent's own requests, and those of other clients: never configurations.
		{"config/json", ConfigRoute{Kind: TopicRequest}},
		{"config/json/42", ConfigRoute{Kind: TopicRequest, RequestID: 42}},
		{"config/json/modbus", ConfigRoute{Kind: TopicRequest, Name: "modbus"}},
		{"config/json/modbus/42", ConfigRoute{Kind: TopicRequest, Name: "modbus", RequestID: 42}},
		// Neither a request id nor a name, or levels 7/CMP does not have.
		{"config/json/007/status", ConfigRoute{}},
		{"config/json/0/status", ConfigRoute{}},
		{"config/json/a.b/status", ConfigRoute{}},
		{"config/json/42/43/status", ConfigRoute{}},
		{"config/json/modbus/other/status", ConfigRoute{}},
		{"config/json/42/status/status", ConfigRoute{}},
		{"config/json/99999999999999999999/status", ConfigRoute{}},
		{"config/json/status/42", ConfigRoute{}},
		{"config/json/", ConfigRoute{}},
		{"config/json//status", ConfigRoute{}},
		{"config/xml/status", ConfigRoute{}},
		{"applied/json/42", ConfigRoute{}},
		{"json", ConfigRoute{}},
		{"config", ConfigRoute{}},
	}
	for _, tt := range tests {
		if got := ParseConfigTopic(strings.Split(tt.rest, "/")); got != tt.want {
			t.Errorf("ParseConfigTopic(%q) = %+v, want %+v", tt.rest, got, tt.want)
		}
	}
}

func TestParseAppliedTopic(t *testing.T) {
	tests := []struct {
		rest string
		name string
		rid  uint64
		ok   bool
	}{
		{"applied/json", "", 0, true},
		{"applied/json/43", "", 43, true},
		{"applied/json/modbus", "modbus", 0, true},
		{"applied/json/modbus/43", "modbus", 43, true},
		{"applied/json/43/status", "", 0, false},
		{"applied/json/007", "", 0, false},
		{"config/json/43", "", 0, false},
	}
	for _, tt := range tests {
		name, rid, ok := ParseAppliedTopic(strings.Split(tt.rest, "/"))
		if name != tt.name || rid != tt.rid || ok != tt.ok {
			t.Errorf("ParseAppliedTopic(%q) = %q, %d, %v; want %q, %d, %v", tt.rest, name, rid, ok, tt.name, tt.rid, tt.ok)
		}
	}
}

func TestConfigRequest_ObservesAndNamesOnlyAnAppliedConfig(t *testing.T) {
	if got := string(ConfigRequest("", false)); got != `{"observe":true}` {
		t.Errorf("request without applied config = %s", got)
	}
	if got := string(ConfigRequest("cfg-<7>", true)); got != `{"observe":true,"configId":"cfg-<7>"}` {
		t.Errorf("request with applied config = %s", got)
	}
	// An applied configuration whose id is "" is still named: the server must know.
	if got := string(ConfigRequest("", true)); got != `{"observe":true,"configId":""}` {
		t.Errorf("request with applied empty id = %s", got)
	}
	r, err := ParseConfigRequest(ConfigRequest("x", true))
	if err != nil || !r.Observe || !r.HasConfigID || r.ConfigID != "x" {
		t.Errorf("ParseConfigRequest = %+v, %v", r, err)
	}
	r, err = ParseConfigRequest([]byte(`{}`))
	if err != nil || r.Observe || r.HasConfigID {
		t.Errorf("ParseConfigRequest({}) = %+v, %v", r, err)
	}
	for _, bad := range []string{`{"configId":5}`, `{"observe":"yes"}`, `null`, `[]`, `{`} {
		if _, err := ParseConfigRequest([]byte(bad)); err == nil {
			t.Errorf("ParseConfigRequest(%s) accepted", bad)
		}
	}
}

func TestParseConfigResponse(t *testing.T) {
	lim := DefaultLimits(1 << 10)
	tests := []struct {
		name    string
		payload string
		want    Response
		reason  string // "" = accepted
		id      string // configId the error carries
	}{
		{"config", `{"configId":"c1","config":{"a":[1,2]}}`, Response{Kind: NewConfig, ConfigID: "c1", Config: []byte(`{"a":[1,2]}`)}, "", ""},
		{"config bytes as received", `{"configId":"c1","config": { "a" : 1.50 } }`, Response{Kind: NewConfig, ConfigID: "c1", Config: []byte(`{ "a" : 1.50 }`)}, "", ""},
		{"config array", `{"config":[1],"configId":"c2"}`, Response{Kind: NewConfig, ConfigID: "c2", Config: []byte(`[1]`)}, "", ""},
		{"config string", `{"configId":"c3","config":"text"}`, Response{Kind: NewConfig, ConfigID: "c3", Config: []byte(`"text"`)}, "", ""},
		{"config null with an id", `{"configId":"c4","config":null}`, Response{Kind: NewConfig, ConfigID: "c4", Config: []byte(`null`)}, "", ""},
		{"escaped id", `{"configId":"c\u00e9\"","config":1}`, Response{Kind: NewConfig, ConfigID: "cé\"", Config: []byte(`1`)}, "", ""},
		{"extra fields of real servers", `{"id":7,"statusCode":200,"reasonPhrase":"OK","configId":"c5","config":{}}`, Response{Kind: NewConfig, ConfigID: "c5", Config: []byte(`{}`)}, "", ""},
		{"unchanged", `{}`, Response{Kind: Unchanged}, "", ""},
		{"unchanged with extra fields", `{"statusCode":200,"reasonPhrase":"Not modified","id":"x"}`, Response{Kind: Unchanged}, "", ""},
		{"none assigned", `{"configId":"","config":null}`, Response{Kind: NoneAssigned}, "", ""},
		{"config missing", `{"configId":"c6"}`, Response{}, "config missing (configId and config come together)", "c6"},
		{"configId missing", `{"config":{"a":1}}`, Response{}, "configId missing (configId and config come together)", ""},
		{"empty id with a config", `{"configId":"","config":{"a":1}}`, Response{}, "configId is empty but config is not null", ""},
		{"number id", `{"configId":7,"config":1}`, Response{}, "configId must be a string, got number", ""},
		{"null id", `{"configId":null,"config":1}`, Response{}, "configId must be a string, got null", ""},
		{"lossy id", `{"configId":"\ud800","config":1}`, Response{}, "configId is not valid Unicode text", ""},
		{"long id", `{"configId":"` + strings.Repeat("x", 300) + `","config":1}`, Response{}, "configId longer than 256 bytes", ""},
		{"not JSON", `{"configId":`, Response{}, "not JSON: unexpected end of JSON input", ""},
		{"array", `[{"configId":"a","config":1}]`, Response{}, "payload must be a JSON object, got array", ""},
		{"null", `null`, Response{}, "payload must be a JSON object, got null", ""},
		{"too large", `{"configId":"a","config":"` + strings.Repeat("x", 1<<10) + `"}`, Response{}, "payload too large: 1052 bytes, limit 1024", "a"}, // the configId comes before the cut: the refusal names it
		{"too deep", `{"configId":"a","config":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, Response{}, "nesting deeper than 64 levels", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfigResponse([]byte(tt.payload), lim)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if got.Kind != tt.want.Kind || got.ConfigID != tt.want.ConfigID || !bytes.Equal(got.Config, tt.want.Config) {
					t.Fatalf("= %v %q %s, want %v %q %s", got.Kind, got.ConfigID, got.Config, tt.want.Kind, tt.want.ConfigID, tt.want.Config)
				}
				return
			}
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v (%T), want *InputError", err, err)
			}
			if ie.Reason != tt.reason || ie.ID.Text() != tt.id {
				t.Errorf("reason %q id %q, want %q id %q", ie.Reason, ie.ID.Text(), tt.reason, tt.id)
			}
		})
	}
}

func TestParseConfigError(t *testing.T) {
	tests := []struct {
		payload string
		want    ErrorResponse
		reason  string
	}{
		{`{"statusCode":404,"reasonPhrase":"Endpoint not found"}`, ErrorResponse{404, "Endpoint not found"}, ""},
		{`{"reasonPhrase":"x","statusCode":500,"id":9}`, ErrorResponse{500, "x"}, ""},
		{`{"statusCode":400}`, ErrorResponse{400, ""}, "reasonPhrase missing"},
		{`{"reasonPhrase":"r"}`, ErrorResponse{0, "r"}, "statusCode missing"},
		{`{"statusCode":"404","reasonPhrase":"r"}`, ErrorResponse{0, "r"}, `statusCode must be an integer from 0 to 999, got "404"`},
		{`{"statusCode":404.5,"reasonPhrase":7}`, ErrorResponse{}, "statusCode must be an integer from 0 to 999, got 404.5; reasonPhrase must be a string, got number"},
		{`{"statusCode":1e3,"reasonPhrase":"r"}`, ErrorResponse{0, "r"}, "statusCode must be an integer from 0 to 999, got 1e3"},
		{`{}`, ErrorResponse{}, "statusCode missing; reasonPhrase missing"},
		{`"oops"`, ErrorResponse{}, "payload must be a JSON object, got string"},
		{`oops`, ErrorResponse{}, "not JSON: invalid character 'o' looking for beginning of value"},
	}
	for _, tt := range tests {
		got, err := ParseConfigError([]byte(tt.payload), DefaultLimits(1<<10))
		if got != tt.want {
			t.Errorf("ParseConfigError(%s) = %+v, want %+v", tt.payload, got, tt.want)
		}
		if tt.reason == "" {
			if err != nil {
				t.Errorf("ParseConfigError(%s) error %v", tt.payload, err)
			}
			continue
		}
		var ie *InputError
		if !errors.As(err, &ie) || ie.Reason != tt.reason {
			t.Errorf("ParseConfigError(%s) error %v, want reason %q", tt.payload, err, tt.reason)
		}
	}
	long := `{"statusCode":500,"reasonPhrase":"` + strings.Repeat("é", 400) + `"}`
	if got, err := ParseConfigError([]byte(long), DefaultLimits(1<<12)); err != nil || len(got.ReasonPhrase) != 512 {
		t.Errorf("long reason kept as %d bytes (%v), want 512", len(got.ReasonPhrase), err)
	}
	if got := (ErrorResponse{404, "Not found"}).String(); got != "404 Not found" {
		t.Errorf("String = %q", got)
	}
}

func TestAppliedReport_ExactFieldsPerStatus(t *testing.T) {
	tests := []struct {
		id     string
		code   int
		reason string
		want   string
	}{
		{"c1", 200, "ok", `{"configId":"c1","statusCode":200}`},
		{"c1", 200, "", `{"configId":"c1","statusCode":200}`},
		{"", 400, "invalid payload: config missing", `{"configId":"","statusCode":400,"reasonPhrase":"invalid payload: config missing"}`},
		{"c2", 422, "validate exited with status 1: <bad>", `{"configId":"c2","statusCode":422,"reasonPhrase":"validate exited with status 1: <bad>"}`},
		{"c3", 500, "", `{"configId":"c3","statusCode":500,"reasonPhrase":"not applied"}`},
	}
	for _, tt := range tests {
		got := AppliedReport(tt.id, tt.code, tt.reason)
		if string(got) != tt.want {
			t.Errorf("AppliedReport(%q, %d, %q) = %s, want %s", tt.id, tt.code, tt.reason, got, tt.want)
		}
		a, err := ParseAppliedReport(got)
		if err != nil || a.ConfigID != tt.id || a.StatusCode != tt.code || a.OK() != (tt.code == 200) {
			t.Errorf("ParseAppliedReport(%s) = %+v, %v", got, a, err)
		}
	}
	if a, err := ParseAppliedReport([]byte(`{"configId":"k"}`)); err != nil || a.StatusCode != 200 || !a.OK() {
		t.Errorf("statusCode defaults to 200: %+v %v", a, err)
	}
	for _, bad := range []string{`{}`, `{"configId":1}`, `{"configId":"a","statusCode":"200"}`, `null`, `[]`} {
		if _, err := ParseAppliedReport([]byte(bad)); err == nil {
			t.Errorf("ParseAppliedReport(%s) accepted", bad)
		}
	}
}

func TestServerPayloads_ParseBackOnTheAgentSide(t *testing.T) {
	lim := DefaultLimits(1 << 10)
	p, err := ConfigResponse("c<1>", []byte(" {\"a\": 1}\n"))
	if err != nil || string(p) != `{"configId":"c<1>","config":{"a":1}}` {
		t.Fatalf("ConfigResponse = %s, %v", p, err)
	}
	if r, err := ParseConfigResponse(p, lim); err != nil || r.Kind != NewConfig || r.ConfigID != "c<1>" || string(r.Config) != `{"a":1}` {
		t.Errorf("parsed back as %+v, %v", r, err)
	}
	if _, err := ConfigResponse("c", []byte(`{`)); err == nil {
		t.Errorf("ConfigResponse accepted a config that is not JSON")
	}
	if r, err := ParseConfigResponse(UnchangedResponse(), lim); err != nil || r.Kind != Unchanged {
		t.Errorf("unchanged parsed back as %+v, %v", r, err)
	}
	if r, err := ParseConfigResponse(NoneAssignedResponse(), lim); err != nil || r.Kind != NoneAssigned {
		t.Errorf("none assigned parsed back as %+v, %v", r, err)
	}
	e, err := ParseConfigError(ConfigErrorPayload(403, "forbidden <x>"), lim)
	if err != nil || e != (ErrorResponse{403, "forbidden <x>"}) {
		t.Errorf("error parsed back as %+v, %v", e, err)
	}
}

func TestConfigIDKey_IsTypedAsAString(t *testing.T) {
	for _, id := range []string{"c1", "", "42", `q"uo<te>`, "é"} {
		key := ConfigIDKey(id)
		if back, ok := ConfigIDFromKey(key); !ok || back != id {
			t.Errorf("ConfigIDFromKey(ConfigIDKey(%q)) = %q, %v", id, back, ok)
		}
	}
	if ConfigIDKey("42") == "42" {
		t.Errorf("the configId \"42\" must not share a key with the 3/CMX number id 42")
	}
	for _, key := range []string{"42", "", "null", `"unterminated`} {
		if _, ok := ConfigIDFromKey(key); ok {
			t.Errorf("ConfigIDFromKey(%q) accepted", key)
		}
	}
}
