package cmx

import (
	"strconv"
	"strings"
	"testing"
)

func BenchmarkParsePush(b *testing.B) {
	// A 1 MiB push of small objects, the largest the default max_payload lets through.
	var sb strings.Builder
	sb.WriteString(`{"id":"big","entries":[`)
	for i := 0; sb.Len() < mib-100; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"key":"k` + strconv.Itoa(i) + `","value":[1,2.5,"x,]",true,null]}`)
	}
	sb.WriteString(`]}`)
	big := []byte(sb.String())

	cases := []struct {
		name    string
		payload []byte
	}{
		{"small", []byte(`{"id":42,"entries":[{"key":"value"},15,["an","array",13]]}`)},
		{"1MiB", big},
	}
	lim := DefaultLimits(mib)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if len(c.payload) > mib {
				b.Fatalf("payload of %d bytes is over the limit", len(c.payload))
			}
			if _, err := ParsePush(c.payload, lim); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(c.payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParsePush(c.payload, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
