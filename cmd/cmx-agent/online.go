package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/transport"
)

// onlineTimeout bounds each network step of check --online: a broker that does not answer is
// one failed line, not a hung command.
const onlineTimeout = 10 * time.Second

// agentUser is the user the packaged unit runs the agent as.
const agentUser = "cmx-agent"

// onlineReport prints one line per check and counts the failures.
type onlineReport struct {
	w      io.Writer
	failed int
}

func (r *onlineReport) ok(format string, args ...any) {
	fmt.Fprintf(r.w, "ok "+format+"\n", args...)
}

func (r *onlineReport) fail(format string, args ...any) {
	r.failed++
	fmt.Fprintf(r.w, "FAIL "+format+"\n", args...)
}

// checkOnline checks what only the live system shows, for a configuration check accepted: each
// server takes a connection with the [broker] settings, each endpoint's subscriptions are granted,
// each output's folder takes a new file, owners, groups and programs are there. It returns the
// exit code: 0 when every check passed, 1 otherwise.
func checkOnline(ctx context.Context, cfg *config.Config, w io.Writer) int {
	r := &onlineReport{w: w}
	var client mqtt.Client
	for _, server := range cfg.Broker.Servers {
		c, err := connectProbe(ctx, cfg.Broker, server)
		if err != nil {
			r.fail("broker %s: %v", redactURL(server), err)
			continue
		}
		how := "connected"
		if config.UsesTLS(server) {
			u, _ := url.Parse(server) // parsed by UsesTLS
			how += ", TLS certificate verified for " + u.Hostname()
		}
		if cfg.Broker.Username != "" {
			how += ", credentials of " + cfg.Broker.Username + " accepted"
		}
		r.ok("broker %s: %s", redactURL(server), how)
		if client == nil {
			client = c
		} else {
			c.Disconnect(0)
		}
	}
	if client == nil {
		r.fail("subscribe: not checked: no broker accepted the connection")
	} else {
		checkSubscriptions(ctx, r, client, cfg)
		client.Disconnect(100)
	}
	// What is the same for every endpoint is read once: the unit's sandbox (a systemctl call) and
	// the service's user.
	host := hostChecks{allowed: unitWritable(cfg)}
	if os.Geteuid() == 0 { // root can write anywhere; the service runs as its own user
		host.service, _ = user.Lookup(agentUser)
	}
	for _, ep := range cfg.Endpoints {
		checkEndpointFiles(r, host, ep)
	}
	if r.failed > 0 {
		return 1
	}
	return 0
}

// connectProbe connects to server alone with a client id of its own (the agent's would make the
// broker disconnect the running agent) and a clean session, which leaves nothing on the broker.
func connectProbe(ctx context.Context, b config.Broker, server string) (mqtt.Client, error) {
	var id [4]byte
	_, _ = rand.Read(id[:])
	b.Servers = []string{server}
	opts, err := transport.ProbeOptions(b, "cmx-agent-check-"+hex.EncodeToString(id[:]))
	if err != nil {
		return nil, fmt.Errorf("%s: fix the file it names", transport.ConnectCause(err))
	}
	opts.SetConnectTimeout(onlineTimeout)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if err := waitToken(ctx, tok); err != nil {
		return nil, fmt.Errorf("%s: check broker.servers, that the broker runs, and the network between", transport.ConnectCause(err))
	}
	return c, nil
}

// waitToken waits for tok within onlineTimeout.
func waitToken(ctx context.Context, tok mqtt.Token) error {
	ctx, cancel := context.WithTimeout(ctx, onlineTimeout+time.Second)
	defer cancel()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return fmt.Errorf("no answer from the broker in %v", onlineTimeout)
	}
}

// endpointFilters are the filters the agent subscribes for ep, as its engine does (cmx3: the push
// topics; cmp7: the configuration's responses).
func endpointFilters(cfg *config.Config, ep config.Endpoint) []string {
	prefix := cmx.Prefix(cfg.Kaa.AppVersion, cfg.Kaa.Extension, ep.Token)
	if cfg.Kaa.Dialect == config.DialectCMP7 {
		return []string{cmx.ConfigFilter(prefix, ep.Name)}
	}
	return cmx.PushFilters(prefix)
}

// checkSubscriptions subscribes each endpoint's filters at QoS 1, as the agent does, and reads the
// SUBACK: 0x80 is the broker's ACL refusing to let this client read the topic.
func checkSubscriptions(ctx context.Context, r *onlineReport, c mqtt.Client, cfg *config.Config) {
	for _, ep := range cfg.Endpoints {
		filters := endpointFilters(cfg, ep)
		subs := make(map[string]byte, len(filters))
		for _, f := range filters {
			subs[f] = 1
		}
		tok := c.SubscribeMultiple(subs, func(mqtt.Client, mqtt.Message) {})
		if err := waitToken(ctx, tok); err != nil {
			r.fail("subscribe %s (endpoint %s): %v: the broker may refuse it by closing the connection; check its ACLs for this client and its log", strings.Join(filters, " "), ep.Key(), err)
			continue
		}
		granted := tok.(*mqtt.SubscribeToken).Result()
		for _, f := range filters {
			switch q := granted[f]; {
			case q == 0x80:
				r.fail("subscribe %s (endpoint %s): refused by the broker (SUBACK 0x80): its ACLs do not let this client read the topic; grant read on %s to the agent's username", f, ep.Key(), f)
			case q == 0:
				r.ok("subscribe %s (endpoint %s): granted QoS 0 only: pushes made while the agent is away are lost", f, ep.Key())
			default:
				r.ok("subscribe %s (endpoint %s): granted QoS %d", f, ep.Key(), q)
			}
		}
		c.Unsubscribe(filters...)
	}
}

// hostChecks is what the endpoints' checks share: the folders the unit's sandbox lets the service
// write (nil: no sandbox known) and, when check runs as root, the service's user.
type hostChecks struct {
	allowed []string
	service *user.User
}

// checkEndpointFiles checks ep's output folder, owner, group and programs.
func checkEndpointFiles(r *onlineReport, host hostChecks, ep config.Endpoint) {
	dir := filepath.Dir(ep.Output)
	if err := checkFolderWritable(dir, host.service); err != nil {
		r.fail("output folder %s (endpoint %s): %v", dir, ep.Key(), err)
	} else if missing := sandboxPath(host.allowed, dir); missing != "" {
		r.fail("output folder %s (endpoint %s): %s", dir, ep.Key(), missing)
	} else {
		r.ok("output folder %s (endpoint %s): writable", dir, ep.Key())
	}
	for _, a := range []struct{ key, name string }{{"owner", ep.Owner}, {"group", ep.Group}} {
		if a.name != "" {
			// check has looked it up already: the line says it was.
			r.ok("%s %s (endpoint %s)", a.key, a.name, ep.Key())
		}
	}
	for _, p := range []struct {
		key  string
		argv []string
	}{{"validate", ep.Validate}, {"hook", ep.Hook}} {
		if len(p.argv) == 0 {
			continue
		}
		if path, err := exec.LookPath(p.argv[0]); err != nil {
			r.fail("%s %s (endpoint %s): %v", p.key, p.argv[0], ep.Key(), err)
		} else {
			r.ok("%s %s (endpoint %s): executable", p.key, path, ep.Key())
		}
	}
}

// checkFolderWritable checks that a file can be made in dir, as the agent makes its temporary
// file there. A folder that is missing is made by the agent: its nearest existing parent must then
// take it. Nothing is left behind. With service set, the folder must be writable by that user too.
func checkFolderWritable(dir string, service *user.User) error {
	at := dir
	for {
		fi, err := os.Stat(at)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a folder (mode %v)", at, fi.Mode())
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		parent := filepath.Dir(at)
		if parent == at {
			return err
		}
		at = parent
	}
	f, err := os.CreateTemp(at, ".cmx-agent-check-*")
	if err != nil {
		return fmt.Errorf("cannot make a file in %s: %w", at, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if service != nil && !writableBy(service, at) {
		return fmt.Errorf("%s is not writable by user %s, as which the service runs: chown or chmod it", at, agentUser)
	}
	return nil
}

// writableBy reads dir's mode bits for u (ACLs aside).
func writableBy(u *user.User, dir string) bool {
	fi, err := os.Stat(dir)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := fi.Mode().Perm()
	if strconv.FormatUint(uint64(st.Uid), 10) == u.Uid {
		return perm&0o300 == 0o300
	}
	gids, _ := u.GroupIds()
	if slices.Contains(gids, strconv.FormatUint(uint64(st.Gid), 10)) {
		return perm&0o030 == 0o030
	}
	return perm&0o003 == 0o003
}

// unitWritable returns the folders the unit's sandbox lets the service write, when systemd runs the
// unit: under ProtectSystem=strict only the state folder and the ReadWritePaths= of the unit and
// its drop-ins are. nil when nothing can be known.
func unitWritable(cfg *config.Config) []string {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), onlineTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", "show", "--property=LoadState,ReadWritePaths,StateDirectory", "cmx-agent").Output()
	if err != nil || !strings.Contains(string(out), "LoadState=loaded") {
		return nil
	}
	allowed := []string{cfg.Agent.StateDir}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "ReadWritePaths":
			for _, p := range strings.Fields(v) {
				allowed = append(allowed, strings.TrimLeft(p, "-+"))
			}
		case "StateDirectory":
			for _, p := range strings.Fields(v) {
				allowed = append(allowed, filepath.Join("/var/lib", p))
			}
		}
	}
	return allowed
}

// sandboxPath says what the sandbox that allows writing only the allowed folders lacks for dir; ""
// when nothing is missing or no sandbox is known (allowed nil).
func sandboxPath(allowed []string, dir string) string {
	if allowed == nil {
		return ""
	}
	for _, a := range allowed {
		if a != "" && (dir == a || strings.HasPrefix(dir, strings.TrimSuffix(a, "/")+"/")) {
			return ""
		}
	}
	return fmt.Sprintf("read-only for the service (ProtectSystem=strict): add a drop-in with systemctl edit cmx-agent:\n       [Service]\n       ReadWritePaths=%s", dir)
}

// redactURL hides a password written into a server URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}
