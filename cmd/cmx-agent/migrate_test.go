package main

import (
	bin "encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/cmx-agent/cmx-agent/store"
)

// A database of the earlier nested layout with one damaged record: the agent starts on it, says
// what it left out, and applies the pending configuration that was readable.
func TestRun_StartsOnAnEarlierLayoutWithADamagedRecord(t *testing.T) {
	e := newCrashEnv(t)
	state := filepath.Join(e.dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(state, store.DBName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		eps, err := tx.CreateBucket([]byte("endpoints"))
		if err != nil {
			return err
		}
		b, err := eps.CreateBucket([]byte("gw-001"))
		if err != nil {
			return err
		}
		offer, _ := json.Marshal(store.Offer{Seq: 5, ID: "5", Text: "5", Routes: []store.Route{{Topic: e.prefix + "/json/status", QoS: 1}}})
		seq := bin.BigEndian.AppendUint64(nil, 5)
		for k, v := range map[string]string{"p" + string(seq): string(offer), "b" + string(seq): "[5]", "next": "{not json"} {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	p := startAgent(t, e.config)
	p.waitLine(t, `a damaged record was left out of its migration" record="endpoint gw-001: pending offer next`)
	if got := e.waitConfirmation(t, "5"); got != "ok" {
		t.Errorf("the readable pending configuration was answered %q, want ok", got)
	}
	e.checkFile(t, "[5]")
	if out, stderr, code := runCLI(t, "status", "--config", e.config); code != 0 {
		t.Errorf("status: exit %d, %s%s; want the agent running", code, out, stderr)
	}
	select {
	case <-p.done:
		t.Errorf("the agent exited with code %d, want it running", p.cmd.ProcessState.ExitCode())
	default:
	}
}
