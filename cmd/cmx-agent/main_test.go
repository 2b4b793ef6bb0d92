package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/agent"
)

func TestCommands_ExitCodesAndOutput(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.toml")
	invalid := filepath.Join(dir, "invalid.toml")
	dotted := filepath.Join(dir, "dotted.toml")
	writeOrFail(t, dotted, "[kaa]\napp_version = \"a\"\n[[endpoint]]\ntoken = \"dev.002\"\noutput = \"out/t.json\"\n")
	writeOrFail(t, valid, "[kaa]\napp_version = \"a\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"out/t.json\"\n")
	fileAtSocket := filepath.Join(dir, "socket-file.toml")
	writeOrFail(t, fileAtSocket, "[kaa]\napp_version = \"a\"\n[agent]\nstate_dir = \"state\"\nsocket = \"data.txt\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"out/t.json\"\n")
	writeOrFail(t, filepath.Join(dir, "data.txt"), "kept\n")
	missingHook := filepath.Join(dir, "missing-hook.toml")
	writeOrFail(t, missingHook, "[kaa]\napp_version = \"a\"\n[agent]\nstate_dir = \"state\"\nsocket = \"agent.sock\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"out/t.json\"\nvalidate = [\"./bin/check.sh\"]\n")
	placeholder := filepath.Join(dir, "placeholder.toml")
	writeOrFail(t, placeholder, "[kaa]\napp_version = \"a\"\n[agent]\nstate_dir = \"state\"\nsocket = \"agent.sock\"\n[[endpoint]]\ntoken = \"change-me\"\noutput = \"out/t.json\"\n")
	noOwner := filepath.Join(dir, "no-owner.toml")
	writeOrFail(t, noOwner, "[kaa]\napp_version = \"a\"\n[agent]\nstate_dir = \"state\"\nsocket = \"agent.sock\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"out/t.json\"\ngroup = \"cmx-no-such-group\"\n")
	writeOrFail(t, invalid, "[kaa]\napp_version = \"a\"\ncolour = \"blue\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"o.json\"\nhook_timeout = \"soon\"\n")

	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     []string
		stderr     []string
		noStderror bool
	}{
		{"check valid", []string{"check", "--config", valid}, 0, []string{valid + ": ok (1 endpoint, dialect cmx3)"}, nil, true},
		{"check invalid lists every problem with its line", []string{"check", "--config", invalid}, 2, nil,
			[]string{invalid + ":3: unknown key kaa.colour", invalid + ":7: "}, false},
		{"check warns about a dot in a token and still passes", []string{"check", "--config", dotted}, 0,
			[]string{dotted + ": ok (1 endpoint, dialect cmx3)"},
			[]string{dotted + `:4: warning: endpoint #1 token: "dev.002" contains a dot: on RabbitMQ`}, false},
		{"check missing file", []string{"check", "--config", filepath.Join(dir, "nope.toml")}, 2, nil, []string{"nope.toml"}, false},
		{"run with invalid config", []string{"run", "--config", invalid}, 2, nil, []string{invalid + ":3: unknown key kaa.colour"}, false},
		{"check refuses a socket path that holds a file", []string{"check", "--config", fileAtSocket}, 2, nil,
			[]string{fileAtSocket + ":5: agent.socket: " + filepath.Join(dir, "data.txt") + " exists and is a regular file, not a socket"}, false},
		{"run refuses a socket path that holds a file", []string{"run", "--config", fileAtSocket}, 2, nil,
			[]string{fileAtSocket + ":5: agent.socket: " + filepath.Join(dir, "data.txt") + " exists and is a regular file, not a socket"}, false},
		{"check refuses a validate program that does not exist", []string{"check", "--config", missingHook}, 2, nil,
			[]string{missingHook + ":9: endpoint #1 validate: " + filepath.Join(dir, "bin", "check.sh") + " does not exist"}, false},
		{"run refuses a validate program that does not exist", []string{"run", "--config", missingHook}, 2, nil,
			[]string{missingHook + ":9: endpoint #1 validate: " + filepath.Join(dir, "bin", "check.sh") + " does not exist"}, false},
		{"check refuses the packaged placeholder token", []string{"check", "--config", placeholder}, 2, nil,
			[]string{placeholder + `:7: endpoint #1 token: "change-me" is the packaged placeholder`, "run cmx-agent init --force --config " + placeholder}, false},
		{"run refuses the packaged placeholder token", []string{"run", "--config", placeholder}, 2, nil,
			[]string{placeholder + `:7: endpoint #1 token: "change-me" is the packaged placeholder`, "run cmx-agent init"}, false},
		{"check refuses a group that does not exist", []string{"check", "--config", noOwner}, 2, nil,
			[]string{noOwner + `:9: endpoint #1 group: group "cmx-no-such-group" does not exist on this machine`}, false},
		{"run refuses a group that does not exist", []string{"run", "--config", noOwner}, 2, nil,
			[]string{noOwner + `:9: endpoint #1 group: group "cmx-no-such-group" does not exist`}, false},
		{"run with bad log format", []string{"run", "--config", valid, "--log-format", "xml"}, 2, nil, []string{"--log-format"}, false},
		{"unknown command", []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`}, false},
		{"no command", nil, 2, nil, []string{"usage:"}, false},
		{"version", []string{"version"}, 0, []string{"cmx-agent dev (commit "}, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit code = %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errb.String())
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout %q lacks %q", out.String(), s)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr %q lacks %q", errb.String(), s)
				}
			}
			if tc.noStderror && errb.Len() > 0 {
				t.Errorf("unexpected stderr: %s", errb.String())
			}
		})
	}
}

func writeOrFail(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestStatus_PrintsTheBrokerLine(t *testing.T) {
	degraded := "subscribed at QoS 0: the broker refuses this client id a QoS 1 subscription; ..."
	cases := []struct {
		name string
		st   agent.Status
		want string
	}{
		{"connected", agent.Status{Connected: true, Server: "tcp://127.0.0.1:1883", Dialect: "cmx3"},
			"broker:  connected to tcp://127.0.0.1:1883 (dialect cmx3)\nENDPOINT"},
		{"connected at QoS 0", agent.Status{Connected: true, Server: "tcp://127.0.0.1:1883", Dialect: "cmx3", Degraded: degraded},
			"broker:  connected to tcp://127.0.0.1:1883 (dialect cmx3)\n         degraded: " + degraded + "\nENDPOINT"},
		{"not connected", agent.Status{LastError: "connection refused", Dialect: "cmp7"},
			"broker:  not connected: connection refused (dialect cmp7)\nENDPOINT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			printStatus(&b, c.st)
			if !strings.HasPrefix(b.String(), c.want) {
				t.Errorf("status printed\n%s\nwant it to begin with\n%s", b.String(), c.want)
			}
		})
	}
}
