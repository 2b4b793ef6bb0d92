package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/sealed"
	"github.com/cmx-agent/cmx-agent/store"
)

// A database from a version without sealed values has no identity: the upgrade makes one. Once
// made, the identity is the same at every start, and its loss is an error at start.
func TestNew_MakesTheIdentityOnUpgradeAndRefusesToStartWhenItIsLostLater(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	st, err := store.OpenStore(state, time.Second, 0) // a database as an earlier version left it
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	cfg := &config.Config{
		Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: config.DialectCMX3},
		Agent:     config.Agent{StateDir: state, MaxPayload: 1 << 16},
		Endpoints: []config.Endpoint{{Token: "gw-001", Output: filepath.Join(dir, "gw-001.json")}},
	}
	start := func() (*Engine, error) {
		e, err := New(cfg, Options{})
		if err == nil {
			e.Close()
		}
		return e, err
	}
	first, err := start()
	if err != nil {
		t.Fatalf("upgrade: %v; want an identity made", err)
	}
	if !strings.HasPrefix(first.Recipient(), "age1") {
		t.Fatalf("recipient %q", first.Recipient())
	}
	again, err := start()
	if err != nil || again.Recipient() != first.Recipient() {
		t.Fatalf("restart: %v; want the recipient %s again", err, first.Recipient())
	}
	if err := os.Remove(filepath.Join(state, sealed.FileName)); err != nil {
		t.Fatal(err)
	}
	if _, err := start(); err == nil || !strings.Contains(err.Error(), "is missing") {
		t.Fatalf("start without the identity: %v; want it refused as missing", err)
	}
	if _, err := os.Stat(filepath.Join(state, sealed.FileName)); err == nil {
		t.Fatal("a new identity was made over a database that had one")
	}
}
