package cmx

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// The seed corpora in testdata/fuzz/FuzzParseConfigResponse and FuzzParseConfigError are written
// against the fuzz limits of FuzzParsePush (4096 bytes, 16 levels, 32-byte ids).

func fuzzLimits() Limits {
	return Limits{MaxPayload: fuzzMaxPayload, MaxDepth: fuzzMaxDepth, MaxIDLen: fuzzMaxIDLen}
}

func FuzzParseConfigResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, payload []byte) {
		in := bytes.Clone(payload)
		r, err := ParseConfigResponse(payload, fuzzLimits())
		if !bytes.Equal(payload, in) {
			t.Fatalf("ParseConfigResponse modified its input")
		}
		if err != nil {
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("error %T %v, want *InputError", err, err)
			}
			if ie.Reason == "" || !utf8.ValidString(ie.Status()) {
				t.Fatalf("reason %q", ie.Reason)
			}
			// The reason goes into an applied report: it must encode and parse back.
			a, perr := ParseAppliedReport(AppliedReport(ie.ID.Text(), 400, ie.Status()))
			if perr != nil || a.ConfigID != ie.ID.Text() || a.ReasonPhrase != ie.Status() {
				t.Fatalf("report for %q does not parse back: %+v %v", payload, a, perr)
			}
			return
		}
		if !json.Valid(payload) || jsonKind(payload) != "object" {
			t.Fatalf("accepted %q, which is not a JSON object", payload)
		}
		if len(payload) > fuzzMaxPayload {
			t.Fatalf("accepted %d bytes, limit %d", len(payload), fuzzMaxPayload)
		}
		if depth, _ := nestingDepth(payload); depth > fuzzMaxDepth {
			t.Fatalf("accepted nesting %d, limit %d", depth, fuzzMaxDepth)
		}
		switch r.Kind {
		case Unchanged, NoneAssigned:
			if r.ConfigID != "" || r.Config != nil {
				t.Fatalf("%v carries %q %q", r.Kind, r.ConfigID, r.Config)
			}
		case NewConfig:
			if r.ConfigID == "" || !utf8.ValidString(r.ConfigID) || len(ConfigIDKey(r.ConfigID)) > fuzzMaxIDLen {
				t.Fatalf("configId %q", r.ConfigID)
			}
			if !json.Valid(r.Config) || !bytes.Contains(payload, r.Config) {
				t.Fatalf("config %q is not JSON taken from %q", r.Config, payload)
			}
			// The configId goes back in requests and reports unchanged.
			if q, err := ParseConfigRequest(ConfigRequest(r.ConfigID, true)); err != nil || q.ConfigID != r.ConfigID {
				t.Fatalf("request for %q parses back as %+v, %v", r.ConfigID, q, err)
			}
			if back, ok := ConfigIDFromKey(ConfigIDKey(r.ConfigID)); !ok || back != r.ConfigID {
				t.Fatalf("key of %q reads back as %q", r.ConfigID, back)
			}
			if a, err := ParseAppliedReport(AppliedReport(r.ConfigID, 200, "")); err != nil || a.ConfigID != r.ConfigID || !a.OK() {
				t.Fatalf("report for %q parses back as %+v, %v", r.ConfigID, a, err)
			}
		default:
			t.Fatalf("kind %v", r.Kind)
		}
	})
}

func FuzzParseConfigError(f *testing.F) {
	f.Fuzz(func(t *testing.T, payload []byte) {
		e, err := ParseConfigError(payload, fuzzLimits())
		if e.StatusCode < 0 || e.StatusCode > 999 || len(e.ReasonPhrase) > maxReason || !utf8.ValidString(e.ReasonPhrase) {
			t.Fatalf("ParseConfigError(%q) = %+v", payload, e)
		}
		if err != nil {
			var ie *InputError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("error %T %v, want *InputError with a reason", err, err)
			}
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("accepted %q, which is not JSON", payload)
		}
		if len(e.ReasonPhrase) < maxReason {
			back, err := ParseConfigError(ConfigErrorPayload(e.StatusCode, e.ReasonPhrase), Limits{})
			if err != nil || back != e {
				t.Fatalf("%+v parses back as %+v, %v", e, back, err)
			}
		}
	})
}

func FuzzParseConfigTopic(f *testing.F) {
	for _, s := range []string{"config/json/status", "config/json/42/status", "config/json/modbus/status",
		"config/json/modbus/42/status", "config/json/modbus/42/error", "config/json/42", "config/json/007/status",
		"config/json//status", "applied/json/modbus/43"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		levels := strings.Split(rest, "/")
		r := ParseConfigTopic(levels)
		if r.Kind == TopicOther {
			if r != (ConfigRoute{}) {
				t.Fatalf("ParseConfigTopic(%q) = %+v for another topic", rest, r)
			}
		} else {
			if r.Name != "" && !ValidConfigName(r.Name) {
				t.Fatalf("ParseConfigTopic(%q): name %q", rest, r.Name)
			}
			// The topic is exactly the one the agent builds for this route.
			want := ConfigRequestTopic("P", r.Name, r.RequestID)
			switch r.Kind {
			case TopicResponse:
				want = StatusTopic(want)
			case TopicError:
				want = ErrorTopic(want)
			}
			if want != "P/"+rest {
				t.Fatalf("ParseConfigTopic(%q) = %+v, which rebuilds as %q", rest, r, want)
			}
		}
		if name, rid, ok := ParseAppliedTopic(levels); ok && AppliedTopic("P", name, rid) != "P/"+rest {
			t.Fatalf("ParseAppliedTopic(%q) = %q %d", rest, name, rid)
		}
	})
}

// Each named seed stays on the path its name promises, under the fuzz limits.
func TestFuzzParseConfigResponseSeeds_ReachTheirPaths(t *testing.T) {
	want := map[string]string{ // seed file -> kind when accepted, or the refusal's reason prefix
		"config-object":        "config",
		"config-spaced":        "config",
		"config-null-with-id":  "config",
		"config-string":        "config",
		"extra-fields":         "config",
		"escaped-id":           "config",
		"duplicate-keys":       "config",
		"unchanged":            "unchanged",
		"unchanged-extra":      "unchanged",
		"none-assigned":        "none assigned",
		"config-missing":       "config missing",
		"configid-missing":     "configId missing",
		"empty-id-with-config": "configId is empty",
		"number-id":            "configId must be a string",
		"lossy-id":             "configId is not valid Unicode",
		"invalid-utf8":         "configId is not valid Unicode",
		"long-id":              "configId longer than 32 bytes",
		"not-json":             "not JSON",
		"array":                "payload must be a JSON object, got array",
		"null":                 "payload must be a JSON object, got null",
		"too-deep":             "nesting deeper than 16",
		"too-large":            "payload too large",
	}
	checkSeeds(t, "FuzzParseConfigResponse", want, func(payload []byte) string {
		r, err := ParseConfigResponse(payload, fuzzLimits())
		if err != nil {
			return err.(*InputError).Reason
		}
		return r.Kind.String()
	})
}

func TestFuzzParseConfigErrorSeeds_ReachTheirPaths(t *testing.T) {
	want := map[string]string{ // seed file -> "ok" when accepted, or the refusal's reason prefix
		"spec":                "ok",
		"extra-fields":        "ok",
		"reason-long":         "ok",
		"reason-invalid-utf8": "ok",
		"code-missing":        "statusCode missing",
		"reason-missing":      "reasonPhrase missing",
		"code-string":         "statusCode must be an integer",
		"code-float":          "statusCode must be an integer",
		"code-exponent":       "statusCode must be an integer",
		"code-negative":       "statusCode must be an integer",
		"code-huge":           "statusCode must be an integer",
		"reason-number":       "reasonPhrase must be a string",
		"empty":               "statusCode missing; reasonPhrase missing",
		"string":              "payload must be a JSON object, got string",
		"not-json":            "not JSON",
	}
	checkSeeds(t, "FuzzParseConfigError", want, func(payload []byte) string {
		if _, err := ParseConfigError(payload, fuzzLimits()); err != nil {
			return err.(*InputError).Reason
		}
		return "ok"
	})
}

func checkSeeds(t *testing.T, target string, want map[string]string, path func([]byte) string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("%s has %d seeds, the table names %d", target, len(files), len(want))
	}
	for _, f := range files {
		name := filepath.Base(f)
		w, ok := want[name]
		if !ok {
			t.Errorf("seed %s is not in the table", name)
			continue
		}
		if got := path(readFuzzSeed(t, f)); !strings.HasPrefix(got, w) {
			t.Errorf("seed %s: %q, want %q", name, got, w)
		}
	}
}
