package cmx

import (
	"reflect"
	"testing"
)

func TestPrefix_IsKp1AppExtensionToken(t *testing.T) {
	if got, want := Prefix("my-app-v1", "cmx", "gw-001"), "kp1/my-app-v1/cmx/gw-001"; got != want {
		t.Fatalf("Prefix = %q, want %q", got, want)
	}
}

func TestValidLevel(t *testing.T) {
	tests := []struct {
		level string
		want  bool
	}{
		{"gw-001", true},
		{"json", true},
		{"42", true},
		{"with space", true},
		{"ünïcödé", true},
		{"", false},
		{"a/b", false},
		{"/", false},
		{"+", false},
		{"a+", false},
		{"#", false},
		{"a#b", false},
		{"nul\x00", false},
		{"\xff\xfe", false},
	}
	for _, tt := range tests {
		if got := ValidLevel(tt.level); got != tt.want {
			t.Errorf("ValidLevel(%q) = %v, want %v", tt.level, got, tt.want)
		}
	}
}

func TestIsRequestID_PositiveIntegersOnly(t *testing.T) {
	tests := []struct {
		level string
		want  bool
	}{
		{"1", true},
		{"42", true},
		{"9", true},
		{"10", true},
		{"18446744073709551615", true},
		{"0", false},
		{"00", false},
		{"007", false},
		{"-1", false},
		{"+1", false},
		{"1.0", false},
		{"1e3", false},
		{" 1", false},
		{"1 ", false},
		{"", false},
		{"status", false},
		{"error", false},
		{"abc", false},
		{"٣", false}, // an Arabic-Indic digit is not an ASCII one
	}
	for _, tt := range tests {
		if got := IsRequestID(tt.level); got != tt.want {
			t.Errorf("IsRequestID(%q) = %v, want %v", tt.level, got, tt.want)
		}
	}
}

func TestSplitTopic(t *testing.T) {
	const app, ext = "app-v1", "cmx"
	tests := []struct {
		name   string
		topic  string
		want   Topic
		wantOK bool
	}{
		{"push", "kp1/app-v1/cmx/gw-001/json", Topic{Token: "gw-001", Rest: []string{"json"}}, true},
		{"push with request id", "kp1/app-v1/cmx/gw-001/json/42", Topic{Token: "gw-001", Rest: []string{"json", "42"}}, true},
		{"own confirmation", "kp1/app-v1/cmx/gw-001/json/status", Topic{Token: "gw-001", Rest: []string{"json", "status"}}, true},
		{"own confirmation with request id", "kp1/app-v1/cmx/gw-001/json/42/status", Topic{Token: "gw-001", Rest: []string{"json", "42", "status"}}, true},
		{"own pull", "kp1/app-v1/cmx/gw-001/pull/json", Topic{Token: "gw-001", Rest: []string{"pull", "json"}}, true},
		{"trailing slash gives an empty last level", "kp1/app-v1/cmx/gw-001/", Topic{Token: "gw-001", Rest: []string{""}}, true},
		{"other app", "kp1/app-v2/cmx/gw-001/json", Topic{}, false},
		{"app that only shares a prefix", "kp1/app-v1x/cmx/gw-001/json", Topic{}, false},
		{"other extension", "kp1/app-v1/epmx/gw-001/json", Topic{}, false},
		{"other protocol version", "kp2/app-v1/cmx/gw-001/json", Topic{}, false},
		{"leading slash", "/kp1/app-v1/cmx/gw-001/json", Topic{}, false},
		{"token only", "kp1/app-v1/cmx/gw-001", Topic{}, false},
		{"nothing after the extension", "kp1/app-v1/cmx/", Topic{}, false},
		{"extension without slash", "kp1/app-v1/cmx", Topic{}, false},
		{"empty token", "kp1/app-v1/cmx//json", Topic{}, false},
		{"empty topic", "", Topic{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := SplitTopic(tt.topic, app, ext)
			if ok != tt.wantOK || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("SplitTopic(%q) = %#v, %v; want %#v, %v", tt.topic, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestIsPush(t *testing.T) {
	tests := []struct {
		rest []string
		want bool
	}{
		{[]string{"json"}, true},
		{[]string{"json", "42"}, true},
		{[]string{"json", "1"}, true},
		{[]string{"json", "status"}, false},
		{[]string{"json", "42", "status"}, false},
		{[]string{"json", "0"}, false},
		{[]string{"json", "007"}, false},
		{[]string{"json", "abc"}, false},
		{[]string{"json", "error"}, false},
		{[]string{"json", "1", "2"}, false},
		{[]string{"json", ""}, false},
		{[]string{"pull", "json"}, false},
		{[]string{"JSON"}, false},
		{[]string{"42"}, false},
		{[]string{""}, false},
		{[]string{}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsPush(tt.rest); got != tt.want {
			t.Errorf("IsPush(%q) = %v, want %v", tt.rest, got, tt.want)
		}
	}
}

func TestTopicStrings(t *testing.T) {
	const p = "kp1/app-v1/cmx/gw-001"
	tests := []struct {
		name, got, want string
	}{
		{"push without request id", PushTopic(p, 0), p + "/json"},
		{"push with request id", PushTopic(p, 42), p + "/json/42"},
		{"push with the largest request id", PushTopic(p, 18446744073709551615), p + "/json/18446744073709551615"},
		{"status of a push", StatusTopic(p + "/json"), p + "/json/status"},
		{"status of a push with request id", StatusTopic(p + "/json/42"), p + "/json/42/status"},
		{"pull", PullTopic(p), p + "/pull/json"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestPushFilters_CoverBothPushTopics(t *testing.T) {
	const p = "kp1/app-v1/cmx/gw-001"
	want := []string{p + "/json", p + "/json/+"}
	if got := PushFilters(p); !reflect.DeepEqual(got, want) {
		t.Fatalf("PushFilters = %q, want %q", got, want)
	}
}

// The agent's confirmation at P/json/status also matches the P/json/+ filter; routing must see that it
// is not a push, while every topic PushTopic makes is one.
func TestRouting_TellsPushesFromOwnConfirmations(t *testing.T) {
	const app, ext, token = "app-v1", "cmx", "gw-001"
	p := Prefix(app, ext, token)
	for _, reqID := range []uint64{0, 1, 42} {
		push := PushTopic(p, reqID)
		tp, ok := SplitTopic(push, app, ext)
		if !ok || tp.Token != token || !IsPush(tp.Rest) {
			t.Errorf("push topic %q: SplitTopic = %#v, %v; IsPush = %v; want token %q and a push", push, tp, ok, IsPush(tp.Rest), token)
		}
		status := StatusTopic(push)
		tp, ok = SplitTopic(status, app, ext)
		if !ok || tp.Token != token || IsPush(tp.Rest) {
			t.Errorf("status topic %q: SplitTopic = %#v, %v; want token %q and not a push", status, tp, ok, token)
		}
	}
	tp, ok := SplitTopic(PullTopic(p), app, ext)
	if !ok || IsPush(tp.Rest) {
		t.Errorf("pull topic routed as %#v, %v; want not a push", tp, ok)
	}
}

func TestPullRequest_Bytes(t *testing.T) {
	tests := []struct {
		id   uint64
		want string
	}{
		{1, `{"id":1}`},
		{42, `{"id":42}`},
		{18446744073709551615, `{"id":18446744073709551615}`},
	}
	for _, tt := range tests {
		if got := string(PullRequest(tt.id)); got != tt.want {
			t.Errorf("PullRequest(%d) = %s, want %s", tt.id, got, tt.want)
		}
	}
}

func TestParsePullRequest_RoundTrip(t *testing.T) {
	for _, id := range []uint64{1, 42, 1 << 53, 18446744073709551615} {
		got, err := ParsePullRequest(PullRequest(id))
		if err != nil || got != id {
			t.Errorf("ParsePullRequest(PullRequest(%d)) = %d, %v", id, got, err)
		}
	}
}

func TestParsePullRequest_Accepts(t *testing.T) {
	tests := []struct {
		payload string
		want    uint64
	}{
		{`{"id": 7}`, 7},
		{` { "id" : 7 , "extra": true } `, 7},
	}
	for _, tt := range tests {
		got, err := ParsePullRequest([]byte(tt.payload))
		if err != nil || got != tt.want {
			t.Errorf("ParsePullRequest(%s) = %d, %v; want %d", tt.payload, got, err, tt.want)
		}
	}
}

func TestParsePullRequest_RefusesWhatIsNotAPositiveIntegerID(t *testing.T) {
	for _, payload := range []string{
		``,
		`not json`,
		`[1]`,
		`{}`,
		`{"id":null}`,
		`{"id":0}`,
		`{"id":-1}`,
		`{"id":1.5}`,
		`{"id":1.0}`,
		`{"id":1e2}`,
		`{"id":"1"}`,
		`{"id":true}`,
		`{"id":18446744073709551616}`,
	} {
		if got, err := ParsePullRequest([]byte(payload)); err == nil {
			t.Errorf("ParsePullRequest(%s) = %d, nil; want an error", payload, got)
		}
	}
}
