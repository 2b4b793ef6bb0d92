package store

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

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
