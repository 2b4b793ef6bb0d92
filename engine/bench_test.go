package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/procio"
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
	before, ok := procio.WriteBytes()
	if !ok {
		b.Skip("no write_bytes in /proc/self/io")
	}
	b.ResetTimer()
	for i := range b.N {
		waitReceiptB(b, c.deliver(p+"/json", 1, fmt.Sprintf(`{"id": %d, "entries": [%q]}`, i+100, body)))
	}
	b.StopTimer()
	after, _ := procio.WriteBytes()
	b.ReportMetric(float64(after-before)/float64(b.N), "disk-bytes/op")
}

func waitReceiptB(b *testing.B, r *Receipt) {
	<-r.Done()
	if r.Err() != nil {
		b.Fatal(r.Err())
	}
}
