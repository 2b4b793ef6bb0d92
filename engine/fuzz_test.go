package engine

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/store"
	"github.com/cmx-agent/cmx-agent/trust"
)

// FuzzInbound drives what the network controls — topic and payload — through the agent's routing
// and the cmx3 decoder, the code between paho and the store, signature checks included. Nothing may
// panic, a refusal always has a status that says what was wrong, an accepted body is valid JSON
// taken from the payload (or, signed, from its verified envelope), and answers go only to the
// endpoint's own status topics.
func FuzzInbound(f *testing.F) {
	k := signer(1)
	for _, p := range []trust.Payload{
		{Token: "gw-001", Version: 3, Config: json.RawMessage(`[{"k":"v"}]`)},
		{Token: "gw-001", Version: 3, Config: json.RawMessage(`{"k":"v"}`)},
		{Token: "gw-002", Version: 3, Config: json.RawMessage(`[]`)},
	} {
		env, err := trust.Sign(k, p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("kp1/app-v1/cmx/gw-001/json", []byte(`{"id":1,"entries":[`+string(env)+`]}`), byte(1))
	}
	f.Add("kp1/app-v1/cmx/gw-001/json", []byte(`{"id":42,"entries":[{"k":"v"}]}`), byte(1))
	f.Add("kp1/app-v1/cmx/gw-001/json/7", []byte(`{"entries":[]}`), byte(0))
	f.Add("kp1/app-v1/cmx/gw-001/json/status", []byte(`{"id":42,"status":"ok"}`), byte(1))
	f.Add("kp1/app-v1/cmx/gw-001/json/007", []byte(`{"id":"x","entries":[1]}`), byte(1))
	f.Add("kp1/app-v1/cmx/gw-001/pull/json", []byte(`{"id":1}`), byte(1))
	f.Add("kp1/app-v1/cmx/gw-001/json", []byte(`{"id":[1],"entries":{}}`), byte(2))
	f.Add("kp1/app-v1/cmx/gw-001/json", []byte(strings.Repeat("[", 100)), byte(1))
	f.Add("kp1/app-v1/cmx/other/json", []byte(`{"entries":[]}`), byte(1))

	cfg := &config.Config{Kaa: config.Kaa{AppVersion: "app-v1", Extension: "cmx", Dialect: config.DialectCMX3}}
	d := cmx3{limits: cmx.Limits{MaxPayload: 4096, MaxDepth: 8, MaxIDLen: 32, MaxEntries: 16}}
	e := &Engine{sig: newSigning(trustOf(k).Loaded, 4096), opt: Options{Clock: clock.Real{}}}
	ep := &endpoint{key: "gw-001", token: "gw-001", cfg: config.Endpoint{Token: "gw-001"}, prefix: cmx.Prefix("app-v1", "cmx", "gw-001"), e: e}
	f.Fuzz(func(t *testing.T, topic string, payload []byte, qos byte) {
		tp, ok := cmx.SplitTopic(topic, cfg.Kaa.AppVersion, cfg.Kaa.Extension)
		if !ok || tp.Token != ep.token || !d.isConfig(ep, tp.Rest) {
			return
		}
		if strings.HasSuffix(topic, "/status") {
			t.Fatalf("the agent's own status topic %q routed as a push", topic)
		}
		in := d.decode(ep, topic, qos, payload, len(payload))
		if in.offer == nil {
			t.Fatalf("decode(%q) gave neither an offer nor a refusal", payload)
		}
		if want := []store.Route{{Topic: topic + "/status", QoS: qos}}; len(in.offer.Routes) != 1 || in.offer.Routes[0] != want[0] {
			t.Fatalf("reply to %+v, want %+v", in.offer.Routes, want)
		}
		if in.reject != nil {
			if !strings.HasPrefix(in.reject.Status, "invalid payload: ") && !strings.HasPrefix(in.reject.Status, "signature: ") || in.reject.OK() {
				t.Fatalf("refusal of %q has status %q", payload, in.reject.Status)
			}
			if len(in.offer.Body) != 0 {
				t.Fatalf("refused push carries a body")
			}
		} else if in.offer.Signed != nil {
			if !json.Valid(in.offer.Body) || in.offer.Signed.Hash != store.Hash(in.offer.Body) || !bytes.HasPrefix(in.offer.Body, []byte("[")) {
				t.Fatalf("accepted signed body %q of %q", in.offer.Body, payload)
			}
		} else if !json.Valid(in.offer.Body) || !bytes.Contains(payload, in.offer.Body) {
			t.Fatalf("accepted body %q is not JSON from the payload %q", in.offer.Body, payload)
		}
		if len(in.offer.ID) > d.limits.MaxIDLen {
			t.Fatalf("id of %d bytes passed a limit of %d", len(in.offer.ID), d.limits.MaxIDLen)
		}
		ms := d.answers(ep, in.offer, Result{Status: "ok", Code: store.CodeOK}, func() uint64 { return 1 })
		if len(ms) != 1 || ms[0].Topic != in.offer.Routes[0].Topic || !json.Valid(ms[0].Payload) {
			t.Fatalf("answers %+v", ms)
		}
	})
}
