package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// These benchmarks run the agent in-process against a real mosquitto, so that `go test -cpuprofile`
// (or -memprofile, -blockprofile) shows where a push's time goes. cmd/cmx-bench measures the real
// binary against a floor; these are for finding why.
//
//	go test ./agent -run '^$' -bench Fanout -benchtime 3x -cpuprofile /tmp/cpu.out

// perfAgent starts an agent with n endpoints (tokens dev-0000...) logging at info to nowhere, and
// waits for its pulls.
func perfAgent(b *testing.B, n int, maxPayload string) (*mqtttest.Client, *mqtttest.Sub, []string) {
	b.Helper()
	br := mqtttest.Start(b)
	dir := b.TempDir()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[broker]\nservers = [%q]\nreconnect_spread = \"0s\"\n[kaa]\napp_version = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\nmax_payload = %q\n", br.URL, app, maxPayload)
	toks := make([]string, n)
	for i := range toks {
		toks[i] = fmt.Sprintf("dev-%04d", i)
		fmt.Fprintf(&sb, "[[endpoint]]\ntoken = %q\noutput = \"out/%s.json\"\n", toks[i], toks[i])
	}
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), []byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	server := br.Client(b)
	pulls := server.Subscribe(b, "kp1/+/cmx/+/pull/json", 1)
	status := server.Subscribe(b, "kp1/+/cmx/+/json/status", 1)
	a, err := New(cfg, Options{Options: engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	for range n {
		pulls.Next(b, 30*time.Second)
	}
	return server, status, toks
}

func BenchmarkPush(b *testing.B) {
	server, status, toks := perfAgent(b, 1, "64KiB")
	topic := "kp1/" + app + "/cmx/" + toks[0] + "/json"
	i := 0
	for b.Loop() {
		i++
		server.Publish(b, topic, 1, fmt.Appendf(nil, `{"id":%d,"entries":[{"seq":%d}]}`, i, i))
		status.Next(b, 30*time.Second)
	}
}

func BenchmarkFanout1000(b *testing.B) {
	server, status, toks := perfAgent(b, 1000, "64KiB")
	round := 0
	for b.Loop() {
		round++
		for _, t := range toks {
			server.Publish(b, "kp1/"+app+"/cmx/"+t+"/json", 1, fmt.Appendf(nil, `{"id":"%d","entries":[{"round":%d}]}`, round, round))
		}
		for range toks {
			status.Next(b, 60*time.Second)
		}
	}
}

func BenchmarkPush1MiB(b *testing.B) {
	server, status, toks := perfAgent(b, 1, "2MiB")
	topic := "kp1/" + app + "/cmx/" + toks[0] + "/json"
	i := 0
	for b.Loop() {
		i++
		var sb strings.Builder
		fmt.Fprintf(&sb, `{"id":%d,"entries":[`, i)
		for j := 0; sb.Len() < 1<<20-100; j++ {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"device":"dev-%06d","sampling_ms":%d}`, j, i)
		}
		sb.WriteString("]}")
		b.SetBytes(int64(sb.Len()))
		server.Publish(b, topic, 1, []byte(sb.String()))
		status.Next(b, 30*time.Second)
	}
}
