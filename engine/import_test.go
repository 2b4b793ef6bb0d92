package engine

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/trust"
)

func (c *core) importAll(envs ...string) []ImportResult {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	raw := make([]json.RawMessage, len(envs))
	for i, e := range envs {
		raw[i] = json.RawMessage(e)
	}
	return c.e.Import(ctx, raw)
}

func TestImport_CMX3AppliesAndConfirmsWithThePayloadsID(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k)}, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "other"})
	got := c.importAll(
		sign(t, k, trust.Payload{Token: "gw", Version: 3, ID: json.RawMessage(`43`), Config: json.RawMessage(`[{"k":"imported"}]`)}),
		sign(t, k, trust.Payload{Token: "gw", Version: 2, Config: json.RawMessage(`[2]`)}),
		`[1]`,
		sign(t, k, trust.Payload{Token: "nobody", Version: 1, Config: json.RawMessage(`[1]`)}),
		sign(t, signer(9), trust.Payload{Token: "gw", Version: 9, Config: json.RawMessage(`[9]`)}),
	)
	want := []ImportResult{
		{Endpoint: "gw", Version: 3, Status: "ok", OK: true},
		{Endpoint: "gw", Version: 2, Status: "signature: version 2 older than 3"},
		{Status: "signature: not a signed configuration (import takes only JWS objects)"},
		{Endpoint: "nobody", Version: 1, Status: "no endpoint nobody is configured"},
		{Status: "signature: not signed by a trusted key (kid " + trust.Thumbprint(signer(9).Public().(ed25519.PublicKey)) + ")"},
	}
	if len(got) != len(want) {
		t.Fatalf("results %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("result %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	c.waitFile(c.output("gw"), `[{"k":"imported"}]`)
	if conf := c.confirmed(p + "/json/status"); conf.ID != "43" || conf.Status != "ok" || conf.QoS != 1 {
		t.Errorf("confirmation %s qos %d, want id 43 ok at QoS 1", conf.raw, conf.QoS)
	}
	if a := c.accepted("gw"); a.Version != 3 {
		t.Errorf("accepted %+v, want version 3", a)
	}
}

func TestImport_CMP7ReportsTheConfigurationApplied(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, Trust: trustOf(k)}, config.Endpoint{Token: "gw", Name: "net"})
	got := c.importAll(sign(t, k, trust.Payload{Token: "gw", Name: "net", Version: 4, ID: json.RawMessage(`"cfg-4"`), Config: json.RawMessage(`{"mtu":9000}`)}))
	if len(got) != 1 || !got[0].OK || got[0].Endpoint != "gw/net" {
		t.Fatalf("results %+v", got)
	}
	c.waitFile(c.output("gw/net"), `{"mtu":9000}`)
	if code, id, _ := c.appliedReport(); code != 200 || id != "cfg-4" {
		t.Errorf("applied report %d %s, want 200 cfg-4", code, id)
	}
}

// An import that cannot be stored is not applied, and says so at once.
func TestImport_NotStoredIsReportedAtOnce(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k), FailCommit: func() error { return errors.New("no space left on device") }}, config.Endpoint{Token: "gw"})
	start := time.Now()
	got := c.importAll(sign(t, k, trust.Payload{Token: "gw", Version: 1, Config: json.RawMessage(`[1]`)}))
	if len(got) != 1 || got[0].OK || !strings.HasPrefix(got[0].Status, "not applied: ") || !strings.Contains(got[0].Status, "no space left on device") {
		t.Fatalf("results %+v, want one 'not applied: ... no space left on device'", got)
	}
	if d := time.Since(start); d > testWait/2 {
		t.Errorf("answered after %v: it waited for a result that cannot come", d)
	}
	if _, err := os.Stat(c.output("gw")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("output written: %v", err)
	}
}
