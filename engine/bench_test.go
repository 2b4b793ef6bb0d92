package engine

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
)

// BenchmarkHeldPush pushes 256-byte configurations one at a time to one endpoint on the held path
// (no broker: an in-memory transport) and reports the bytes written to disk per push: the output
// file and the one commit.
func BenchmarkHeldPush(b *testing.B) {
	c := startCore(b, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	// The confirmations are read as a server would, so the transport never waits for a reader.
	go func() {
		for range c.sent {
		}
	}()
	body := strings.Repeat("x", 200)
	for i := range 20 { // warm-up: the handled set and the outbox get their pages
		waitReceiptB(b, c.deliver(p+"/json", 1, fmt.Sprintf(`{"id": %d, "entries": [%q]}`, i+1, body)))
	}
	before := procWriteBytes(b)
	b.ResetTimer()
	for i := range b.N {
		waitReceiptB(b, c.deliver(p+"/json", 1, fmt.Sprintf(`{"id": %d, "entries": [%q]}`, i+100, body)))
	}
	b.StopTimer()
	b.ReportMetric(float64(procWriteBytes(b)-before)/float64(b.N), "disk-bytes/op")
}

func waitReceiptB(b *testing.B, r *Receipt) {
	<-r.Done()
	if r.Err() != nil {
		b.Fatal(r.Err())
	}
}

// BenchmarkOpenStore opens a database of 200 endpoints, each with a 64 KiB body: the start-up
// cost of checking and opening the state file.
func BenchmarkOpenStore(b *testing.B) {
	dir := b.TempDir()
	st, err := OpenStore(dir, time.Second, 1000)
	if err != nil {
		b.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 200 {
		if err := st.Update(func(tx *Tx) error { return tx.SetBody(fmt.Sprintf("ep-%03d", i), body) }); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	b.ResetTimer()
	for range b.N {
		st, err := OpenStore(dir, time.Second, 1000)
		if err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
}
